"""Settings of the inference server (`MLOPS_INFERENCE_*`); shared concerns use their own classes."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlops.settings import RegistryPeerSettings

PRODUCER_MAX_REQUEST_BYTES = 1_048_576
"""aiokafka's default `max_request_size`, which the platform's producers keep: a larger message fails whole."""


class InferenceSettings(RegistryPeerSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLOPS_INFERENCE_", extra="ignore", frozen=True, populate_by_name=True
    )

    grpc_port: int = 8001
    """Open Inference Protocol and gRPC health, on one port (Triton's)."""
    http_port: int | None = 8000
    """Open Inference Protocol over HTTP/REST (KServe V2), beside gRPC in the same process; unset to serve
    gRPC only. Secured as gRPC is: TLS with `MLOPS_GRPC_TLS_CERT` / `MLOPS_GRPC_TLS_KEY`, and with
    `MLOPS_GRPC_AUTH` the bearer tokens of `MLOPS_GRPC_TOKEN_FILE` (no client certificates)."""
    http_max_body_bytes: int = Field(64 * 1024 * 1024, ge=1)
    """Largest REST request body (JSON or binary tensors); more is 413 before the model is asked."""
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    """The process's event loop (gRPC and REST share it): `auto` takes uvloop where it is installed."""
    metrics_port: int | None = 8002
    consumer_group: str = "mlops-inference"
    """Only a client id: every replica reads the whole desired-state topic, with no group offsets."""
    server_id: str = Field(default_factory=socket.gethostname)
    """This replica's name in `InferenceLogged.server_id` (host name or pod name)."""

    execution_provider: Literal["auto", "cpu", "cuda"] = "auto"
    """onnxruntime provider: `auto` puts CUDA first when a GPU can be used, then the CPU."""
    onnx_threads: int = Field(1, ge=0)
    """Intra-op threads per session; 0 lets onnxruntime choose."""
    inference_threads: int = Field(2, ge=1)
    """Threads that run `session.run` off the event loop, shared by every loaded version."""
    inline_run_us: int = Field(200, ge=0)
    """A version whose calls take less than this on average runs them on the event loop: for small
    models the hop to an inference thread costs more than the model. 0 sends every call to the threads."""
    warmup_runs: int = Field(3, ge=0)
    """Calls on a loaded session before it takes traffic, so that lazy initialisation misses requests."""

    max_request_rows: int = Field(10_000, ge=1)
    """Rows one request may carry; more is RESOURCE_EXHAUSTED."""
    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1)
    """Tensor bytes one request may carry; more is RESOURCE_EXHAUSTED (the gRPC limit is `MLOPS_GRPC_MAX_MESSAGE_MB`)."""

    max_queued_requests: int = Field(1_000, ge=1)
    """Requests one version may have waiting for a batch or an inference thread; more is RESOURCE_EXHAUSTED."""
    max_shadow_calls: int = Field(256, ge=1)
    """Shadow calls in flight; past it a shadow's copy of a request is shed and counted
    (`mlops_inference_shadow_shed_total`), never waited for."""

    log_enabled: bool = True
    """Publish sampled predictions as `InferenceLogged`."""
    log_sampling_rate: float = Field(1.0, gt=0.0, le=1.0)
    """Fraction of requests logged, in (0, 1]."""
    log_batch_records: int = Field(500, ge=1)
    """Records per `InferenceLogged` message; a full batch is published at once."""
    log_flush_interval_ms: int = Field(1_000, ge=1)
    """Oldest a buffered record gets before its batch is published anyway."""
    log_max_message_bytes: int = Field(512 * 1024, ge=4096, le=PRODUCER_MAX_REQUEST_BYTES - 64 * 1024)
    """Largest `InferenceLogged` message: batches are split to fit. Below the producer's largest request
    (1 MiB), with room for the envelope's headers; a single record larger than this is dropped and
    counted (`record_too_large`)."""
    log_queue_size: int = Field(20_000, ge=1)
    """Records waiting for the logger; beyond it records are dropped and counted, never waited for."""
    log_publish_timeout_s: float = Field(10.0, gt=0)
    """How long one batch may take to reach Kafka before its records count as dropped."""

    signatures_from_registry: bool = True
    """Ask the registry for each loaded version's text-feature vocabularies (`ModelSignature.categories`);
    without them a text feature is sent as its code. With `confirm_artifacts` off, an unreachable registry
    or unknown version only leaves the vocabularies out."""
    confirm_artifacts: bool = True
    """Load only an artifact whose sha256 the registry (`MLOPS_REGISTRY_ADDR`) holds for the version the
    desired state names; any other state is refused (dead-lettered) and what served before keeps serving.
    Off only for a data plane without a registry (tests of the data plane that serve models of their own)."""
    registry_cache_size: int = Field(1024, ge=1)
    """Registry records of versions kept (versions are immutable); the least recently used go first."""
    desired_state_retry_s: float = Field(2.0, gt=0)
    """Wait before loading a desired state again after the artifact store was unreachable."""
