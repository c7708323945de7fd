"""Settings refuse insecure defaults in production; errors map to statuses both ways."""

from __future__ import annotations

import grpc
import pytest
from pydantic import ValidationError

from mlops.errors import IntegrityError, InvalidArgument, MlopsError, NotFound, error_for_status
from mlops.settings import DatabaseSettings, KafkaSettings


def test_production_refuses_the_development_database_password(monkeypatch):
    monkeypatch.setenv("MLOPS_ENV", "production")
    monkeypatch.delenv("MLOPS_DATABASE_URL", raising=False)
    with pytest.raises(ValidationError, match="development password"):
        DatabaseSettings()
    monkeypatch.setenv("MLOPS_DATABASE_URL", "postgresql+asyncpg://svc:s3cret@db:5432/mlops")
    assert DatabaseSettings().asyncpg_dsn == "postgresql://svc:s3cret@db:5432/mlops"


def test_settings_come_from_prefixed_variables(monkeypatch):
    monkeypatch.setenv("MLOPS_KAFKA_BOOTSTRAP", "kafka-0:9092,kafka-1:9092")
    monkeypatch.setenv("MLOPS_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MLOPS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
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
