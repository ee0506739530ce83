"""Data: the dataset registry (in-memory tensors), normalization and augmentations."""
