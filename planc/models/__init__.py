"""Model families as data: what distinguishes one Hugging Face family's numbers from another's."""
