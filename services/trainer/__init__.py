"""The trainer: from a committed data set version and a model spec to a registered, checked ONNX model."""
