"""Settings of the evaluator service (`MLOPS_EVALUATOR_*`); shared concerns use their own classes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlops.settings import RegistryPeerSettings


class EvaluatorSettings(RegistryPeerSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLOPS_EVALUATOR_", extra="ignore", frozen=True, populate_by_name=True
    )

    # The gRPC server carries only the health service: the evaluator has no API of its own.
    grpc_port: int = 50055
    metrics_port: int | None = 9105
    consumer_group: str = "mlops-evaluator"
    champion_alias: str = "production"
    """The alias whose version is the champion a challenger is compared with."""
    latency_sample_size: int = Field(200, ge=1)
    """Single-row inference calls timed for the p50 / p99 latency."""
    latency_warmup: int = Field(20, ge=0)
    """Untimed calls first, so that lazy initialisation does not land in the p99."""
    execution_provider: Literal["auto", "cpu", "cuda"] = "auto"
    """onnxruntime provider: `auto` puts CUDA first when a GPU can be used, then the CPU."""
    onnx_threads: int = Field(1, ge=0)
    """Intra-op threads per session; 1 suits single-row latency on shared cores, 0 lets onnxruntime choose."""
    slice_max_values: int = Field(10, ge=1)
    """A numeric slice column with more distinct values than this is cut into quantile bins."""
    slice_bins: int = Field(4, ge=2)
    """Quantile bins of a numeric slice column with many values."""
    min_slice_rows: int = Field(10, ge=1)
    """The slice gate skips slices with fewer held-out rows than this (their metric is noise)."""
    max_concurrent_evaluations: int = Field(1, ge=1)
    """Evaluations at once; one keeps latency measurements from competing with each other."""
