"""MLOPS_DATABASE_URL with TLS: libpq's spelling becomes what SQLAlchemy's asyncpg dialect passes on,
and `asyncpg_dsn` gives asyncpg's own `connect()` the same parameters back."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy.engine import make_url

from mlops.settings import DatabaseSettings

BASE = "postgresql+asyncpg://svc:p%40ss@127.0.0.1:5432/mlops"


@pytest.fixture(autouse=True)
def _development(monkeypatch):
    monkeypatch.setenv("MLOPS_ENV", "development")


def test_a_url_without_tls_parameters_is_kept_as_it_is():
    settings = DatabaseSettings(url=BASE)
    assert settings.url == BASE
    assert settings.asyncpg_dsn == "postgresql://svc:p%40ss@127.0.0.1:5432/mlops"


def test_libpq_tls_parameters_reach_asyncpg_through_sqlalchemy_as_keywords_and_a_dsn():
    settings = DatabaseSettings(url=BASE + "?sslmode=verify-full&sslrootcert=/stack/a%2Bb%20c/ca.pem")
    # what SQLAlchemy's asyncpg dialect hands to asyncpg.connect() as keywords
    query = make_url(settings.url).query
    assert query["ssl"] == "verify-full"
    assert set(query) == {"ssl", "dsn"}, "asyncpg.connect() takes no sslmode or sslrootcert keyword"
    assert parse_qs(urlsplit(query["dsn"]).query) == {"sslrootcert": ["/stack/a+b c/ca.pem"]}
    assert make_url(settings.url).password == "p@ss"
    # and asyncpg's own DSN, in libpq's spelling
    dsn = urlsplit(settings.asyncpg_dsn)
    assert dsn.netloc == "svc:p%40ss@127.0.0.1:5432" and dsn.path == "/mlops"
    assert parse_qs(dsn.query) == {"sslmode": ["verify-full"], "sslrootcert": ["/stack/a+b c/ca.pem"]}


def test_sqlalchemys_ssl_spelling_is_libpqs_sslmode_for_asyncpg():
    settings = DatabaseSettings(url=BASE + "?ssl=require")
    assert settings.url == BASE + "?ssl=require"
    assert settings.asyncpg_dsn == "postgresql://svc:p%40ss@127.0.0.1:5432/mlops?sslmode=require"


def test_production_accepts_either_spelling_of_tls_and_refuses_none(monkeypatch):
    monkeypatch.setenv("MLOPS_ENV", "production")
    for query in ("?sslmode=verify-full&sslrootcert=/ca.pem", "?ssl=verify-full", "?sslmode=require"):
        assert DatabaseSettings(url=BASE + query).url.startswith(BASE)
    for query in ("", "?sslmode=prefer", "?sslmode=disable&sslrootcert=/ca.pem"):
        with pytest.raises(ValueError, match="has no TLS"):
            DatabaseSettings(url=BASE + query)
