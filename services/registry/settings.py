"""Settings of the registry service (`MLOPS_REGISTRY_*`); shared concerns use their own classes."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from mlops.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLOPS_REGISTRY_", extra="ignore", frozen=True, populate_by_name=True
    )

    grpc_port: int = 50051
    metrics_port: int | None = 9101
    consumer_group: str = "mlops-registry"
    verify_data_commits: bool = True
    """Read every data set back (committed on Kafka or recorded over gRPC) and check its sha256 and
    describe its columns before recording it."""
    max_page_size: int = 1000
    default_page_size: int = 50
    max_artifact_bytes: int = 512 << 20
    """The largest file RegisterModel and UploadRunArtifact accept (held in memory while it is read)."""
    profile_max_rows: int = 100_000
    """Rows of the data set a registered model is profiled on (a seeded sample of larger sets)."""
