"""Model artifacts: the one safe loader, logging to MLflow, the compiled (ONNX) flavour."""
