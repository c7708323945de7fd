"""Prometheus metrics of the inference server, under the names the dashboards query.

Series are labelled only with what this server serves: a model name a caller typed that names no
served model counts as `UNKNOWN_MODEL`, and a version's series go when it leaves the desired state,
so that the number of series follows the desired state, not the callers.
"""

import contextlib

from prometheus_client import Counter, Gauge, Histogram

UNKNOWN_MODEL = "_unknown"
"""The model label of requests for a model this server was never asked to serve."""
CODES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
"""gRPC status names, the values of the `code` label."""
LOG_DROP_REASONS = ("queue_full", "publish_failed", "record_too_large")
"""Why prediction records were not published (`mlops_inference_log_dropped_total`)."""

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
    "Prediction records not published: queue_full (instead of slowing inference), publish_failed "
    "(Kafka did not take them in time), record_too_large (one record over the message size bound)",
    ["model", "reason"],
)
LOAD_FAILURES = Counter(
    "mlops_inference_load_failures_total",
    "Desired states refused because a version could not be loaded",
    ["model", "reason"],
)
SHADOW_SHED = Counter(
    "mlops_inference_shadow_shed_total",
    "Shadow calls not made because the bound on shadow calls in flight was reached",
    ["model"],
)


def forget_version(model: str, version: str) -> None:
    """Drop the series of a version that no longer serves."""
    for code in CODES:
        with contextlib.suppress(KeyError):
            REQUESTS.remove(model, version, code)
    for metric in (REQUEST_SECONDS, BATCH_SIZE):
        with contextlib.suppress(KeyError):
            metric.remove(model, version)


def forget_model(model: str) -> None:
    """Drop the model-level series of a model that no longer serves (its versions' go with them)."""
    forget_version(model, "")
