"""The PyTorch backend: emits and runs the distributed program of a plan. Imports torch."""
