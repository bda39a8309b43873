"""planc's small runtime library, imported by generated programs: sharded layers per strategy."""
