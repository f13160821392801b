"""ortserve: batched, typed REST inference for ONNX models."""

__version__ = "0.1.0"
