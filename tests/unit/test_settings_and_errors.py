"""Settings refuse insecure defaults in production; errors map to statuses both ways."""

from __future__ import annotations

import importlib.util
import os
import ssl
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from mlops.errors import IntegrityError, InvalidArgument, MlopsError, NotFound, error_for_status
from mlops.settings import ArtifactSettings, DatabaseSettings, KafkaSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_stack_settings(monkeypatch):
    """Each test states the settings it means: the local stack's `.stack/env` (which tests/conftest.py
    loads, with the operator's Kafka identity) must not leak into them."""
    for name in list(os.environ):
        if name.startswith(("MLOPS_KAFKA_", "MLOPS_DATABASE_", "MLOPS_GRPC_", "MLOPS_SECRETS_DIR")):
            monkeypatch.delenv(name)


def x509_common_name(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_production_refuses_the_development_database_password(monkeypatch):
    monkeypatch.setenv("MLOPS_ENV", "production")
    monkeypatch.delenv("MLOPS_DATABASE_URL", raising=False)
    with pytest.raises(ValidationError, match="development password"):
        DatabaseSettings()
    monkeypatch.setenv("MLOPS_DATABASE_URL", "postgresql+asyncpg://svc:s3cret@db:5432/mlops")
    with pytest.raises(ValidationError, match=r"has no TLS: production needs \?ssl=verify-full"):
        DatabaseSettings()
    monkeypatch.setenv("MLOPS_DATABASE_URL", "postgresql+asyncpg://svc:s3cret@db:5432/mlops?ssl=verify-full")
    assert DatabaseSettings().asyncpg_dsn == "postgresql://svc:s3cret@db:5432/mlops?sslmode=verify-full"


def test_production_refuses_kafka_without_tls(monkeypatch):
    monkeypatch.setenv("MLOPS_ENV", "production")
    for protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
        monkeypatch.setenv("MLOPS_KAFKA_SECURITY_PROTOCOL", protocol)
        with pytest.raises(ValidationError, match=f"{protocol} sends events unencrypted"):
            KafkaSettings()
    monkeypatch.setenv("MLOPS_KAFKA_SECURITY_PROTOCOL", "SSL")
    assert KafkaSettings().security_protocol == "SSL"


def test_production_refuses_an_s3_endpoint_without_tls(monkeypatch):
    monkeypatch.setenv("MLOPS_ENV", "production")
    monkeypatch.delenv("MLOPS_ARTIFACT_S3_CA_FILE", raising=False)
    for endpoint in ("http://s3:9000", "HTTP://127.0.0.1:9000"):
        monkeypatch.setenv("MLOPS_ARTIFACT_S3_ENDPOINT_URL", endpoint)
        with pytest.raises(
            ValidationError, match="sends artifacts unencrypted; production needs an https://"
        ):
            ArtifactSettings()
    monkeypatch.setenv("MLOPS_ARTIFACT_S3_ENDPOINT_URL", "https://s3:9000")
    assert ArtifactSettings().s3_endpoint_url == "https://s3:9000"
    monkeypatch.delenv("MLOPS_ARTIFACT_S3_ENDPOINT_URL")
    assert ArtifactSettings().s3_endpoint_url is None  # AWS itself
    monkeypatch.setenv("MLOPS_ENV", "development")
    monkeypatch.setenv("MLOPS_ARTIFACT_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert ArtifactSettings().s3_endpoint_url == "http://127.0.0.1:9000"


def test_the_s3_ca_file_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("MLOPS_ARTIFACT_S3_CA_FILE", str(tmp_path / "absent.pem"))
    with pytest.raises(ValidationError, match=r"MLOPS_ARTIFACT_S3_CA_FILE .*absent.pem does not exist"):
        ArtifactSettings()
    (tmp_path / "ca.pem").write_text("a CA")
    monkeypatch.setenv("MLOPS_ARTIFACT_S3_CA_FILE", str(tmp_path / "ca.pem"))
    assert ArtifactSettings().s3_ca_file == tmp_path / "ca.pem"


def test_a_secret_can_come_from_a_mounted_file_named_after_its_variable(monkeypatch, tmp_path):
    (tmp_path / "MLOPS_KAFKA_SASL_PASSWORD").write_text("from-a-file")
    monkeypatch.setenv("MLOPS_SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv("MLOPS_KAFKA_SASL_PASSWORD", raising=False)
    settings = KafkaSettings(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="registry"
    )
    assert settings.sasl_password.get_secret_value() == "from-a-file"
    assert "from-a-file" not in repr(settings)


def test_settings_come_from_prefixed_variables(monkeypatch):
    monkeypatch.setenv("MLOPS_KAFKA_BOOTSTRAP", "kafka-0:9092,kafka-1:9092")
    monkeypatch.setenv("MLOPS_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MLOPS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MLOPS_KAFKA_SASL_USERNAME", "registry")
    monkeypatch.setenv("MLOPS_KAFKA_SASL_PASSWORD", "pw")
    options = KafkaSettings().client_options()
    assert options["bootstrap_servers"] == "kafka-0:9092,kafka-1:9092"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"


def test_a_typo_in_an_enumerated_setting_fails_loudly(monkeypatch):
    monkeypatch.setenv("MLOPS_KAFKA_SECURITY_PROTOCOL", "SASL_SLL")
    with pytest.raises(ValidationError, match="security_protocol"):
        KafkaSettings()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound, grpc.StatusCode.NOT_FOUND),
        (IntegrityError, grpc.StatusCode.DATA_LOSS),
    ],
)
def test_errors_round_trip_through_their_status(error, code):
    assert error.grpc_code == code
    again = error_for_status(code, "message")
    assert type(again) is error and again.message == "message"


def test_an_unknown_status_still_gives_a_platform_error():
    assert type(error_for_status(grpc.StatusCode.UNAUTHENTICATED, "who?")) is MlopsError


@pytest.fixture(scope="module")
def local_ca(tmp_path_factory) -> Path:
    """A CA and a certificate from the local PKI, for settings that load real files."""
    root = tmp_path_factory.mktemp("pki")
    spec = importlib.util.spec_from_file_location("mlops_local_pki_settings", ROOT / "infra/local/pki.py")
    pki = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pki
    spec.loader.exec_module(pki)
    pki.ensure(root)
    return root


def test_plaintext_options_have_no_tls_and_no_sasl():
    options = KafkaSettings(bootstrap="k:9092").client_options()
    assert options == {
        "bootstrap_servers": "k:9092",
        "security_protocol": "PLAINTEXT",
        "request_timeout_ms": 30_000,
    }


def test_ssl_builds_a_context_that_trusts_the_configured_ca(local_ca):
    options = KafkaSettings(security_protocol="SSL", ssl_cafile=local_ca / "ca.pem").client_options()
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", x509_common_name(local_ca / "ca.pem")),),)
    ]
    assert "sasl_mechanism" not in options


def test_ssl_with_a_client_certificate_loads_the_key_pair(local_ca):
    settings = KafkaSettings(
        security_protocol="SSL",
        ssl_cafile=local_ca / "ca.pem",
        ssl_certfile=local_ca / "broker.pem",
        ssl_keyfile=local_ca / "broker.key",
    )
    assert isinstance(settings.client_options()["ssl_context"], ssl.SSLContext)
    wrong = KafkaSettings(
        security_protocol="SSL",
        ssl_cafile=local_ca / "ca.pem",
        ssl_certfile=local_ca / "broker.pem",
        ssl_keyfile=local_ca / "ca.key",
    )
    with pytest.raises(ValueError, match="MLOPS_KAFKA_SSL_CERTFILE"):
        wrong.client_options()


def test_sasl_ssl_gives_scram_credentials_and_the_context(local_ca):
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="upstream",
        sasl_password="s3cret-pw",
        ssl_cafile=local_ca / "ca.pem",
    )
    options = settings.client_options()
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "upstream"
    assert options["sasl_plain_password"] == "s3cret-pw"


def test_sasl_plaintext_has_credentials_but_no_context():
    options = KafkaSettings(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p"
    ).client_options()
    assert "ssl_context" not in options and options["sasl_plain_password"] == "p"


def test_sasl_without_a_mechanism_or_credentials_is_refused_by_name():
    with pytest.raises(ValidationError, match="MLOPS_KAFKA_SASL_MECHANISM"):
        KafkaSettings(security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="MLOPS_KAFKA_SASL_USERNAME and MLOPS_KAFKA_SASL_PASSWORD"):
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u")


def test_a_missing_ca_file_is_named(tmp_path):
    settings = KafkaSettings(security_protocol="SSL", ssl_cafile=tmp_path / "nowhere.pem")
    with pytest.raises(ValueError, match=r"MLOPS_KAFKA_SSL_CAFILE .*nowhere\.pem"):
        settings.client_options()


def test_the_sasl_password_is_never_printed(monkeypatch):
    monkeypatch.setenv("MLOPS_KAFKA_SASL_PASSWORD", "hunter2-very-secret")
    monkeypatch.setenv("MLOPS_KAFKA_SASL_USERNAME", "evaluator")
    monkeypatch.setenv("MLOPS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    settings = KafkaSettings()
    assert "hunter2-very-secret" not in repr(settings)
    assert "hunter2-very-secret" not in str(settings)
    assert "hunter2-very-secret" not in settings.model_dump_json()
    assert settings.sasl_password.get_secret_value() == "hunter2-very-secret"
