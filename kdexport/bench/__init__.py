"""Benchmarking: one timing path for onnxruntime and PyTorch eager, and the bench command."""
