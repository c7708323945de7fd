"""Settings of the trainer service (`MLOPS_TRAINER_*`); shared concerns use their own classes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlops import spec_defaults
from mlops.settings import RegistryPeerSettings


class TrainerSettings(RegistryPeerSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLOPS_TRAINER_", extra="ignore", frozen=True, populate_by_name=True
    )

    # The gRPC server carries only the health service: the trainer has no API of its own.
    grpc_port: int = 50054
    metrics_port: int | None = 9104
    consumer_group: str = "mlops-trainer"
    max_parallel_jobs: int = Field(1, ge=1)
    """Training jobs run at once, each in its own worker process."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where torch trains: CUDA when available ("auto"), or forced."""
    torch_threads: int = Field(1, ge=1)
    """Intra-op threads per worker process; fixed, so that a run's numbers do not depend on the machine's load."""
    job_lease_s: float = Field(60.0, gt=0)
    """A claimed job is retried by another worker (or after a restart) once its lease lapses; renewed while it runs."""
    job_poll_interval_s: float = Field(0.5, gt=0)
    """How often an idle worker looks for pending jobs."""
    upload_patience_s: float = Field(300.0, ge=0)
    """How long a trained model waits out an S3 outage before its upload gives up; the job then goes back
    to the queue (trained again later) instead of failing for good."""
    job_max_attempts: int = Field(3, ge=1)
    """Claims of one job before it is failed for good (the worker died each time)."""
    default_max_seconds: int = Field(int(spec_defaults.TRAINING["max_seconds"]), ge=1)
    """Wall time of one job when its spec names no `training.max_seconds` (specs applied before it existed)."""
    max_parameters: int = Field(20_000_000, ge=1)
    """Largest network a job may build, counted once the data set's features and classes are known.
    Mirrors the registry's `MAX_PARAMETERS` (a service does not import another service)."""
