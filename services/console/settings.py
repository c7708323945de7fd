"""Settings of the console (`MLOPS_CONSOLE_*`, and the peers' shared `MLOPS_<PEER>_ADDR`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from mlops.settings import Settings, current_environment


def _peer(default: str, env: str, name: str):
    return Field(default, validation_alias=AliasChoices(env, name))


class ConsoleSettings(Settings):
    model_config = SettingsConfigDict(
        env_prefix="MLOPS_CONSOLE_", extra="ignore", frozen=True, populate_by_name=True
    )

    host: str = "127.0.0.1"
    """Address the web server listens on (0.0.0.0 in a container)."""
    port: int = 8080
    """Port of the web console (HTTP, or HTTPS with `tls_cert`)."""
    tls_cert: Path | None = None
    """PEM certificate chain; set (with `tls_key`), the console speaks HTTPS only."""
    tls_key: Path | None = None
    """PEM private key of `tls_cert`."""
    registry_addr: str = _peer("127.0.0.1:50051", "MLOPS_REGISTRY_ADDR", "registry_addr")
    """The registry's gRPC address where people's bearer tokens are accepted (the local stack: its
    token port, 50061)."""
    deployer_addr: str = _peer("127.0.0.1:50052", "MLOPS_DEPLOYER_ADDR", "deployer_addr")
    """The deployer's gRPC address for token holders (local stack: 50062)."""
    monitor_addr: str = _peer("127.0.0.1:50053", "MLOPS_MONITOR_ADDR", "monitor_addr")
    """The monitor's gRPC address for token holders (local stack: 50063)."""
    call_timeout_s: float = Field(5.0, gt=0)
    """Deadline of one call to a service; a page says which service did not answer."""
    jaeger_query_url: str = _peer("http://127.0.0.1:16686", "MLOPS_JAEGER_QUERY_URL", "jaeger_query_url")
    """Jaeger's query API (v3), read to draw traces."""
    jaeger_ui_url: str | None = None
    """Jaeger's web UI, linked from trace pages where there is one; unset: no link (a Jaeger built
    without UI assets serves only the API)."""
    prometheus_url: str = ""
    """Prometheus's HTTP API, read for the alerts page (`/api/v1/alerts`, the rules of
    infra/prometheus/alerts.yml); empty: the page says no Prometheus is configured."""
    prometheus_timeout_s: float = Field(3.0, gt=0)
    """Deadline of one read of Prometheus's alerts."""
    session_ttl_s: int = Field(8 * 3600, gt=0)
    """How long a sign-in lasts."""
    max_sessions: int = Field(1000, ge=1)
    """Sessions kept at most; the oldest is signed out first."""
    cookie_secure: bool = False
    """Mark the session cookie Secure (browsers then send it over HTTPS only); implied by `tls_cert`."""
    cache_ttl_s: float = Field(3.0, ge=0)
    """How long a read answered by a service is reused for the same person (0: never)."""
    cache_entries: int = Field(512, ge=0)
    """Reads cached at most, across all people."""
    events: bool = True
    """Read the event topics (live feed, dead letters); needs the Kafka settings (`MLOPS_KAFKA_*`)."""
    consumer_group: str = "mlops-console"
    """Prefix of the console's consumer groups (each console process reads the topics in full)."""
    max_sse_clients: int = Field(100, ge=1)
    """Browsers following the live feed at once; more are told to retry later (503)."""
    recent_events: int = Field(200, ge=1)
    """Events kept for the live feed and the front page."""
    dead_letters_kept: int = Field(500, ge=1)
    """Dead letters kept in memory per topic (the newest)."""
    replay_sasl_username: str | None = None
    """The Kafka identity a replayed dead letter is published as: the operators' (only they may write
    another identity's topic). Unset: replay is off. The console's own identity only reads."""
    replay_sasl_password: SecretStr | None = None
    """Its password; kept out of repr() and logs."""

    @model_validator(mode="after")
    def _coherent(self) -> ConsoleSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "MLOPS_CONSOLE_TLS_CERT and MLOPS_CONSOLE_TLS_KEY go together: set both or neither"
            )
        if current_environment() == "production" and not self.https:
            raise ValueError(
                "the console sends session cookies: production needs MLOPS_CONSOLE_TLS_CERT/KEY or, behind "
                "a TLS-terminating proxy, MLOPS_CONSOLE_COOKIE_SECURE=true"
            )
        return self

    @property
    def https(self) -> bool:
        return self.tls_cert is not None or self.cookie_secure
