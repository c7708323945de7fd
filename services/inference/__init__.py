"""The inference server: the platform's data plane (Open Inference Protocol on onnxruntime)."""
