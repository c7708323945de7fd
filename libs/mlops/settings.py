"""Typed settings, one class per concern, each read from environment variables with its own prefix.

Services build the classes they need once, in their composition root, and pass them into
constructors; nothing imports a settings object as a global.
"""

from __future__ import annotations

import os
import re
import ssl
import urllib.parse
from pathlib import Path
from typing import Literal

from aiokafka.helpers import create_ssl_context
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "test", "production"]


def current_environment() -> Environment:
    """`MLOPS_ENV`: development (default), test or production. Production refuses insecure defaults."""
    value = os.environ.get("MLOPS_ENV", "development")
    if value not in ("development", "test", "production"):
        raise ValueError(f"MLOPS_ENV must be development, test or production, got {value!r}")
    return value  # type: ignore[return-value]


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=True)


class Settings(BaseSettings):
    """Variables first; a setting may also come from a file named after its variable in the folder
    `MLOPS_SECRETS_DIR` names (Kubernetes mounts secrets there as files, not as variables)."""

    def __init__(self, **values) -> None:
        secrets = os.environ.get("MLOPS_SECRETS_DIR")
        if secrets and Path(secrets).is_dir() and "_secrets_dir" not in values:
            values["_secrets_dir"] = secrets
        super().__init__(**values)


class KafkaSettings(Settings):
    """How to reach the Kafka cluster (`MLOPS_KAFKA_*`)."""

    model_config = _config("MLOPS_KAFKA_")

    bootstrap: str = "127.0.0.1:9092"
    """Comma-separated bootstrap servers."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Transport security; managed clusters usually want SASL_SSL."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism when the protocol is SASL_*; the local stack's secured listener uses SCRAM-SHA-512."""
    sasl_username: str | None = None
    """The principal this client authenticates as (one per service: `registry`, `trainer`, ...)."""
    sasl_password: SecretStr | None = None
    """Its password; kept out of repr() and logs."""
    ssl_cafile: Path | None = None
    """PEM file of the CA that signed the brokers' certificates (the local stack's:
    `.stack/clients/ca.pem`); unset, the system's trusted CAs are used, as managed clusters need."""
    ssl_certfile: Path | None = None
    """PEM client certificate, for clusters that authenticate clients by TLS certificate."""
    ssl_keyfile: Path | None = None
    """PEM private key of `ssl_certfile`."""
    request_timeout_ms: int = 30_000
    """Upper bound on one broker request, including metadata at start-up."""

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> KafkaSettings:
        if current_environment() == "production" and self.security_protocol in (
            "PLAINTEXT",
            "SASL_PLAINTEXT",
        ):
            raise ValueError(
                f"MLOPS_KAFKA_SECURITY_PROTOCOL={self.security_protocol} sends events unencrypted; "
                "production needs SSL or SASL_SSL"
            )
        # aiokafka would fail later, at the first connection, with a message that names no variable
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism is None:
                raise ValueError(f"MLOPS_KAFKA_SASL_MECHANISM is required with {self.security_protocol}")
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError(
                    f"MLOPS_KAFKA_SASL_USERNAME and MLOPS_KAFKA_SASL_PASSWORD are required with {self.security_protocol}"
                )
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for SSL and SASL_SSL: verifies the brokers' certificates and host names."""
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"MLOPS_KAFKA_{name.upper()} {path} does not exist or is not a file")
        try:
            return create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        except ssl.SSLError as error:
            if self.ssl_certfile is not None:
                raise ValueError(
                    f"MLOPS_KAFKA_SSL_CERTFILE {self.ssl_certfile} and MLOPS_KAFKA_SSL_KEYFILE "
                    f"{self.ssl_keyfile} are not a certificate and its key: {error}"
                ) from None
            raise ValueError(
                f"MLOPS_KAFKA_SSL_CAFILE {self.ssl_cafile} holds no usable CA certificate: {error}"
            ) from None

    def client_options(self) -> dict[str, object]:
        """Keyword arguments shared by aiokafka producers, consumers and admin clients."""
        options: dict[str, object] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.sasl_mechanism:
            options |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            }
        return options


class BusSettings(Settings):
    """Behaviour of the event bus (`MLOPS_BUS_*`): retries, batching, the outbox relay, topics."""

    model_config = _config("MLOPS_BUS_")

    max_attempts: int = Field(5, ge=1)
    """Attempts at one message before it goes to `<topic>.dlq`."""
    retry_backoff_ms: int = Field(100, ge=0)
    """First retry delay; doubles per attempt up to `retry_backoff_max_ms`."""
    retry_backoff_max_ms: int = Field(5_000, ge=0)
    max_poll_records: int = Field(500, ge=1)
    """Largest batch a consumer takes from Kafka at once."""
    poll_timeout_ms: int = Field(200, ge=1)
    outbox_batch_size: int = Field(500, ge=1)
    """Largest number of outbox rows the relay publishes per round trip."""
    outbox_poll_interval_ms: int = Field(1_000, ge=10)
    """Fallback poll of the outbox; commits also wake the relay at once through NOTIFY."""
    inbox_retention_hours: int = Field(24 * 7, ge=1)
    """How long handled event ids are kept for de-duplication."""
    topic_partitions: int = Field(3, ge=1)
    """Partitions for topics the platform creates; size them for consumer-group scale-out."""
    topic_replication: int = Field(1, ge=1)
    topic_prefix: str = ""
    """Prepended to every topic name, so that environments (or a benchmark) can share one cluster."""
    linger_ms: int = Field(5, ge=0)
    """Producer batching delay: a few milliseconds buys large batches under load."""


_DATABASE_TLS = re.compile(r"[?&](ssl|sslmode)=(require|verify-ca|verify-full|true)\b")
_DSN_ONLY = ("sslrootcert", "sslcert", "sslkey", "sslcrl")
"""libpq's TLS file parameters, which asyncpg reads from a DSN only, never as `connect()` keywords."""


def _split_query(url: str) -> tuple[urllib.parse.SplitResult, list[tuple[str, str]]]:
    parts = urllib.parse.urlsplit(url)
    return parts, urllib.parse.parse_qsl(parts.query, keep_blank_values=True)


def _with_query(parts: urllib.parse.SplitResult, query: list[tuple[str, str]]) -> str:
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class DatabaseSettings(Settings):
    """PostgreSQL (`MLOPS_DATABASE_*`).

    TLS is spelt in the URL as libpq spells it, `?sslmode=verify-full&sslrootcert=/path/ca.pem`, or as
    SQLAlchemy's asyncpg dialect does, `?ssl=verify-full` (then asyncpg looks for the CA in
    `PGSSLROOTCERT` or `~/.postgresql/root.crt`). `url` holds the form SQLAlchemy and Alembic take,
    `asyncpg_dsn` the form `asyncpg.connect()` takes; both verify the server the same way.
    """

    model_config = _config("MLOPS_DATABASE_")

    url: str = "postgresql+asyncpg://mlops:mlops@127.0.0.1:5432/mlops"
    """SQLAlchemy URL with the asyncpg driver; TLS parameters in libpq's spelling are accepted."""
    connect_deadline_s: float = Field(60.0, gt=0)
    """How long start-up waits for the database before giving up."""
    pool_size: int = Field(10, ge=1)
    max_overflow: int = Field(10, ge=0)
    echo: bool = False
    """Log every SQL statement (debugging only)."""

    @field_validator("url")
    @classmethod
    def _tls_for_sqlalchemy(cls, url: str) -> str:
        """libpq's `sslmode` and TLS files become what SQLAlchemy's asyncpg dialect can pass on.

        The dialect hands every query parameter to `asyncpg.connect()` as a keyword. asyncpg takes
        the mode as `ssl`, but the CA file only from a DSN, and lets keywords override what a DSN
        says: so `sslmode=M&sslrootcert=F` becomes `ssl=M&dsn=postgresql://?sslrootcert=F`.
        """
        parts, query = _split_query(url)
        if not any(key == "sslmode" or key in _DSN_ONLY for key, _ in query):
            return url
        files = [(key, value) for key, value in query if key in _DSN_ONLY]
        rest = [("ssl" if key == "sslmode" else key, value) for key, value in query if key not in _DSN_ONLY]
        if files:
            rest.append(("dsn", "postgresql://?" + urllib.parse.urlencode(files)))
        return _with_query(parts, rest)

    @model_validator(mode="after")
    def _refuse_default_password(self) -> DatabaseSettings:
        if current_environment() == "production":
            if ":mlops@" in self.url:
                raise ValueError(
                    "MLOPS_DATABASE_URL uses the development password; set a real one in production"
                )
            if not _DATABASE_TLS.search(self.url):
                raise ValueError(
                    "MLOPS_DATABASE_URL has no TLS: production needs ?ssl=verify-full (or require) on the URL"
                )
        return self

    @property
    def asyncpg_dsn(self) -> str:
        """The same URL in the form asyncpg's own `connect()` takes: libpq's spelling, TLS files included."""
        parts, query = _split_query(self.url.replace("postgresql+asyncpg://", "postgresql://", 1))
        dsn_query: list[tuple[str, str]] = []
        for key, value in query:
            if key == "dsn":
                dsn_query += _split_query(value)[1]
            else:
                dsn_query.append(("sslmode" if key == "ssl" else key, value))
        return _with_query(parts, dsn_query) if query else urllib.parse.urlunsplit(parts)


class ArtifactSettings(Settings):
    """The artifact store (`MLOPS_ARTIFACT_*`)."""

    model_config = _config("MLOPS_ARTIFACT_")

    root: str = Field(default_factory=lambda: (Path.home() / ".local/share/mlops/artifacts").as_uri())
    """Where artifacts live: `file:///abs/path` (embedded default) or `s3://bucket[/prefix]`."""
    s3_endpoint_url: str | None = None
    """Endpoint of an S3-compatible server; unset means AWS. Credentials come from the usual AWS_* variables."""
    s3_ca_file: Path | None = None
    """PEM file of the CA that signed the endpoint's certificate (the local stack's:
    `.stack/clients/ca.pem`); unset, the system's trusted CAs are used, as AWS needs."""
    s3_region: str = "us-east-1"
    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"
    multipart_threshold_mb: int = Field(64, ge=5)
    """Files larger than this are uploaded in parts."""

    @model_validator(mode="after")
    def _refuse_plain_http(self) -> ArtifactSettings:
        _check_files("MLOPS_ARTIFACT_", self, ("s3_ca_file",))
        endpoint = (self.s3_endpoint_url or "").strip().lower()
        if current_environment() == "production" and endpoint.startswith("http://"):
            raise ValueError(
                f"MLOPS_ARTIFACT_S3_ENDPOINT_URL={self.s3_endpoint_url} sends artifacts "
                "unencrypted; production needs an https:// endpoint"
            )
        return self


class TelemetrySettings(Settings):
    """Metrics and tracing switches (`MLOPS_TELEMETRY_*`); exporters themselves take the standard OTEL_* variables."""

    model_config = _config("MLOPS_TELEMETRY_")

    metrics_port: int | None = None
    """Port of the Prometheus endpoint (`/metrics`); unset means no endpoint."""
    metrics_host: str = "127.0.0.1"
    tracing: bool = True
    """Export spans over OTLP (endpoint from OTEL_EXPORTER_OTLP_ENDPOINT)."""


def _check_files(prefix: str, settings: BaseSettings, names: tuple[str, ...]) -> None:
    for name in names:
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ValueError(f"{prefix}{name.upper()} {path} does not exist or is not a file")


class GrpcServerSettings(Settings):
    """A gRPC server's listening address, limits and security (`MLOPS_GRPC_*`); services override the port.

    The local stack (infra/local/services.sh) and the Kubernetes manifests set TLS, mutual TLS and
    `auth` for every service; production refuses a server without them. With `tls_client_ca` set,
    client certificates are required on `port` (mutual TLS): grpcio's server credentials can require a
    verified client certificate or not ask for one, never ask and accept its absence. People holding
    bearer tokens therefore call `token_port`, a second listener that speaks TLS without asking for a
    certificate and admits token holders only.
    """

    model_config = _config("MLOPS_GRPC_")

    host: str = "127.0.0.1"
    port: int = 50051
    max_message_mb: int = Field(64, ge=1)
    """Largest request or response accepted."""
    shutdown_grace_s: float = Field(5.0, ge=0)
    """How long in-flight calls may finish when the server stops."""
    tls_cert: Path | None = None
    """PEM certificate chain of the server; set (with `tls_key`), the server speaks TLS only."""
    tls_key: Path | None = None
    """PEM private key of `tls_cert`."""
    tls_client_ca: Path | None = None
    """PEM CA that signs client certificates; set, every client must present one it signed (mutual TLS),
    and the certificate's subject CN is the caller's identity."""
    auth: bool = False
    """Require a principal on every call except health checks and apply the access table
    (`mlops.grpc.access`); needs TLS, since tokens and identities in plaintext can be read and replayed."""
    token_file: Path | None = None
    """Bearer tokens this server accepts: lines `<sha256 hex of the token> <identity> <role>`."""
    token_port: int | None = None
    """A second listener for token holders (TLS, no client certificate asked): with mutual TLS on
    `port`, the way in for people and tools that hold a token rather than a certificate."""
    cert_roles: dict[str, Literal["viewer", "operator", "admin", "service"]] = Field(default_factory=dict)
    """Role per certificate CN (JSON, e.g. `{"user:alice": "operator"}`); wins over the certificate's OU."""

    @model_validator(mode="after")
    def _security_is_coherent(self) -> GrpcServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("MLOPS_GRPC_TLS_CERT and MLOPS_GRPC_TLS_KEY go together: set both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(
                "MLOPS_GRPC_TLS_CLIENT_CA needs MLOPS_GRPC_TLS_CERT and MLOPS_GRPC_TLS_KEY (mutual TLS is TLS)"
            )
        if self.auth and self.tls_cert is None:
            raise ValueError(
                "MLOPS_GRPC_AUTH needs MLOPS_GRPC_TLS_CERT and MLOPS_GRPC_TLS_KEY: "
                "tokens and identities sent in plaintext can be read and replayed"
            )
        if self.auth and self.token_file is None and self.tls_client_ca is None:
            raise ValueError(
                "MLOPS_GRPC_AUTH needs MLOPS_GRPC_TOKEN_FILE or MLOPS_GRPC_TLS_CLIENT_CA: nobody could prove who they are"
            )
        if self.token_port is not None and (self.token_file is None or not self.auth):
            raise ValueError(
                "MLOPS_GRPC_TOKEN_PORT admits token holders only: it needs MLOPS_GRPC_AUTH=true and MLOPS_GRPC_TOKEN_FILE"
            )
        if current_environment() == "production" and not self.auth:
            raise ValueError(
                "gRPC without TLS and authorisation: production needs MLOPS_GRPC_TLS_CERT, MLOPS_GRPC_TLS_KEY, "
                "MLOPS_GRPC_AUTH=true and MLOPS_GRPC_TLS_CLIENT_CA or MLOPS_GRPC_TOKEN_FILE"
            )
        if (self.token_file is not None or self.cert_roles) and not self.auth:
            raise ValueError(
                "MLOPS_GRPC_TOKEN_FILE and MLOPS_GRPC_CERT_ROLES take effect only with MLOPS_GRPC_AUTH=true"
            )
        _check_files("MLOPS_GRPC_", self, ("tls_cert", "tls_key", "tls_client_ca", "token_file"))
        return self


class GrpcClientSettings(Settings):
    """How a service or the CLI secures its gRPC channels (`MLOPS_GRPC_CLIENT_*`); all unset: plaintext,
    which production refuses."""

    model_config = _config("MLOPS_GRPC_CLIENT_")

    tls: bool = False
    """Speak TLS; implied by any of the files below. Without `ca_file`, the system's trusted CAs verify
    the server."""
    ca_file: Path | None = None
    """PEM CA that signed the servers' certificates (the local stack's: `.stack/clients/ca.pem`)."""
    cert_file: Path | None = None
    """PEM client certificate for mutual TLS; its subject CN is this client's identity."""
    key_file: Path | None = None
    """PEM private key of `cert_file`."""
    token: SecretStr | None = None
    """Bearer token sent as `authorization: Bearer <token>` on every call; needs TLS. Kept out of repr()."""
    server_name: str | None = None
    """Expected name in the server's certificate when it differs from the address dialled."""

    @model_validator(mode="after")
    def _client_is_coherent(self) -> GrpcClientSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "MLOPS_GRPC_CLIENT_CERT_FILE and MLOPS_GRPC_CLIENT_KEY_FILE go together: set both or neither"
            )
        if self.token is not None and not self.secure:
            raise ValueError(
                "MLOPS_GRPC_CLIENT_TOKEN needs TLS (MLOPS_GRPC_CLIENT_TLS or MLOPS_GRPC_CLIENT_CA_FILE): "
                "a token sent in plaintext can be read and replayed"
            )
        if current_environment() == "production" and not self.secure:
            raise ValueError(
                "gRPC client without TLS: production needs MLOPS_GRPC_CLIENT_CA_FILE (or MLOPS_GRPC_CLIENT_TLS=true)"
            )
        _check_files("MLOPS_GRPC_CLIENT_", self, ("ca_file", "cert_file", "key_file"))
        return self

    @property
    def secure(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None


class ServiceSettings(Settings):
    """What every service's settings have; each service subclasses it with its own prefix and defaults."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    grpc_host: str = "127.0.0.1"
    """Address of the service's gRPC server (its API, or the health service only)."""
    grpc_port: int
    metrics_port: int | None = None
    """Prometheus endpoint; unset to disable."""
    consumer_group: str
    """The Kafka consumer group every replica of the service joins."""

    def grpc_server(self) -> GrpcServerSettings:
        return GrpcServerSettings(host=self.grpc_host, port=self.grpc_port)


class RegistryPeerSettings(ServiceSettings):
    """Settings of a service that calls the registry."""

    registry_addr: str = Field(
        "127.0.0.1:50051", validation_alias=AliasChoices("MLOPS_REGISTRY_ADDR", "registry_addr")
    )
    """The registry's gRPC address (`MLOPS_REGISTRY_ADDR`, shared by every peer of the registry)."""
    registry_timeout_s: float = Field(30.0, gt=0)
    """Deadline of one registry call."""
