"""Prometheus metrics of the inference server, under the names the dashboards query."""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "mlops_inference_requests_total",
    "ModelInfer calls by model, resolved version ('' when none) and gRPC status name",
    ["model", "version", "code"],
)
REQUEST_SECONDS = Histogram(
    "mlops_inference_request_seconds",
    "Server-side latency of ModelInfer",
    ["model", "version"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "mlops_inference_batch_size",
    "Rows per onnxruntime call",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
TRAFFIC_PERCENT = Gauge(
    "mlops_inference_traffic_percent",
    "Share of live requests a version answers, by role (production, canary, shadow)",
    ["model", "version", "role"],
)
LOADED_MODELS = Gauge("mlops_inference_loaded_models", "Model versions loaded and serving")
SWAPS = Counter("mlops_inference_swaps_total", "Routing tables swapped in for a model", ["model"])
LOG_RECORDS = Counter("mlops_inference_log_records_total", "Prediction records published", ["model"])
LOG_DROPPED = Counter(
    "mlops_inference_log_dropped_total",
    "Prediction records dropped instead of slowing inference (queue_full, publish_failed)",
    ["model", "reason"],
)
LOAD_FAILURES = Counter(
    "mlops_inference_load_failures_total",
    "Desired states refused because a version could not be loaded",
    ["model", "reason"],
)
