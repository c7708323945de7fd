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
