"""Settings of the deployer service (`MLOPS_DEPLOYER_*`, and `MLOPS_MONITOR_ADDR` for its peer)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from mlops.settings import RegistryPeerSettings


class DeployerSettings(RegistryPeerSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLOPS_DEPLOYER_", extra="ignore", frozen=True, populate_by_name=True
    )

    grpc_port: int = 50052
    """The `Deployer` API and gRPC health."""
    metrics_port: int | None = 9102
    consumer_group: str = "mlops-deployer"
    monitor_addr: str = Field(
        "127.0.0.1:50053", validation_alias=AliasChoices("MLOPS_MONITOR_ADDR", "monitor_addr")
    )
    """The monitor's gRPC address (`MLOPS_MONITOR_ADDR`, shared by every peer of the monitor)."""
    monitor_timeout_s: float = Field(2.0, gt=0)
    """Deadline of one `Monitor.GetHealth` call; a call past it counts as no answer and holds the step."""
    tick_interval_s: float = Field(1.0, gt=0)
    """How often every running rollout is looked at: its candidate's health checked, its step judged."""
    hold_check_interval_s: float = Field(10.0, gt=0)
    """While a step is held (no answer from the monitor, too few requests), the candidate is checked
    at intervals doubling from `tick_interval_s` up to this, so that a long hold does not add spans
    to the rollout's trace every second."""
    max_prediction_drift: float = Field(0.0, ge=0)
    """Bound on the PSI of the candidate's predictions against the baseline's for specs that set no
    `rollout.max_prediction_drift`; 0 (the default) reports the drift without judging on it."""
    production_alias: str = "production"
    """The registry alias moved to a promoted version (compare-and-set, so the ledger records it)."""
    canary_alias: str = "canary"
    """The registry alias that points to the candidate while a rollout runs; removed when it ends."""
    actor: str = "mlops-deployer"
    """Who the deployer says it is in the alias ledger and in events, for the moves it decides itself."""
