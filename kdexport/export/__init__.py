"""Export: PyTorch -> ONNX with a parity proof, INT8 quantization, and prediction from a file."""
