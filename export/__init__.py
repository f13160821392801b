"""PyTorch → ONNX model folders for ortserve, each proven by a parity check."""
