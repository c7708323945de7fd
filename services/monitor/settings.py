"""Settings of the monitor service (`MLOPS_MONITOR_*`); shared concerns use their own classes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlops.settings import RegistryPeerSettings


class MonitorSettings(RegistryPeerSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLOPS_MONITOR_", extra="ignore", frozen=True, populate_by_name=True
    )

    grpc_port: int = 50053
    metrics_port: int | None = 9103
    consumer_group: str = "mlops-monitor"
    """Consumer group of the ground-truth consumer; inference logs use `<group>.inference`."""

    start_from: Literal["earliest", "latest"] = "earliest"
    """Where ingestion starts on a partition the monitor has no stored offset for."""
    flush_interval_ms: int = Field(1_000, ge=10)
    """How often window state, predictions and consumed offsets are committed together."""
    tick_interval_ms: int = Field(200, ge=10)
    """How often windows are checked for closing and ground truth is joined."""
    window_grace_ms: int = Field(500, ge=0)
    """A window closes this long after its end, so that records still in flight count in it."""
    fetch_partition_mb: int = Field(8, ge=1)
    """Most inference-log data fetched per partition in one round trip to the broker."""
    max_links_per_window: int = Field(32, ge=0)
    """Trace contexts of inference-log batches a window's span links to (the first ones)."""

    spec_cache_s: float = Field(30.0, gt=0)
    """How long a model's spec is reused before it is read from the registry again."""
    unknown_model_cache_s: float = Field(5.0, gt=0)
    """How long a model the registry does not know is remembered as unknown."""
    max_cached_models: int = Field(10_000, ge=1)
    """Model names whose spec (or absence from the registry) is cached, and look-up locks kept; event
    producers choose the names, so the least recently used past this are forgotten and read again."""
    max_cached_versions: int = Field(1_000, ge=1)
    """Model versions whose compiled training profile is cached (the least recently used past this
    are read again from the artifact store when next needed)."""
    max_tracked_versions: int = Field(1_000, ge=1)
    """Versions whose health, alarm run, newest closed window and live metrics are held in memory;
    past this the least recently used are forgotten (alarm runs are read back from PostgreSQL)."""
    max_metric_series: int = Field(10_000, ge=1)
    """Prometheus series (label sets: model, version, feature, ...) the monitor exports; past this
    the least recently updated series is dropped from the endpoint."""
    max_clock_skew_s: float = Field(300.0, gt=0)
    """How far ahead of this monitor's clock a logged request time (or observed ground truth) may
    be. A later one is a producer's clock or data gone wrong: its batch goes to the dead-letter
    topic instead of opening a window that would not close for years."""

    health_horizon_s: int = Field(900, ge=10)
    """How far back the in-memory health state reaches (the largest GetHealth window)."""
    min_prediction_drift_samples: int = Field(20, ge=1)
    """Predictions each of candidate and baseline needs before GetHealth reports prediction drift."""

    p_value_correction: Literal["bonferroni", "none"] = "bonferroni"
    """For ks and chi2: divide the spec's p-value threshold by the number of features tested, so that
    a window of many in-distribution features does not alarm by chance."""
    prediction_drift_threshold: float = Field(0.2, gt=0)
    """PSI of the predicted distribution against the profile's above which a window counts as drifted."""
    alarm_cooldown_s: float = Field(300.0, ge=0)
    """After DriftDetected (or PerformanceDegraded), the same version raises it again only after this."""

    store_predictions: bool = True
    """Keep every logged prediction (with its features) for the ground-truth join and retraining sets."""
    prediction_retention_hours: float = Field(72.0, gt=0)
    """How long predictions and unmatched ground truth are kept."""
    window_retention_days: float = Field(30.0, gt=0)
    """How long closed windows (drift history, `mlops drift status`) are kept."""
    label_match_window_s: float = Field(600.0, gt=0)
    """How long a label is looked for among the logged predictions; one whose prediction was not
    logged by then (sampled out) stays unmatched until retention removes it."""
    min_labels_per_window: int = Field(20, ge=1)
    """Labelled predictions a window needs before its live metric is judged against the gate."""

    retrain_dataset: Literal["latest", "assembled", "auto"] = "auto"
    """What a drift retrain trains on: the spec's latest data set version; a new version assembled
    from the drifted windows' labelled traffic; or that when there is enough of it, else the latest."""
    retrain_min_labelled_rows: int = Field(100, ge=1)
    """Labelled predictions in the drifted windows needed to assemble a data set version."""
    assembled_includes_parent: bool = False
    """An assembled data set version holds the version the model was trained on plus the new rows;
    by default only the drifted windows' labelled rows, so that the retrained model's own profile is
    the traffic it now sees (with the old rows mixed in, it would drift again on the same traffic)."""
