"""PostgreSQL on the running local stack: TLS only, and one role per service with rights on its own
schema alone (infra/local/components/postgres.sh, infra/local/pg_roles.py).

Every object a test makes lives in a service's own schema, is made by that service's role and is
dropped again; the one test that restarts PostgreSQL (`up` upgrading a server of an older stack)
does what `make up` does on such a stack.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib
import importlib.util
import json
import os
import re
import stat
import subprocess
import uuid
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import text

from mlops.db import Database
from mlops.settings import DatabaseSettings

ROOT = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("MLOPS_STACK_DIR", ROOT / ".stack"))
PKI = STACK / "pki"
SERVICES = ("registry", "trainer", "evaluator", "deployer", "monitor")


def service_url(service: str) -> str:
    return (PKI / "pg" / f"{service}.url").read_text().strip()


def dsn(service: str) -> str:
    return DatabaseSettings(url=service_url(service)).asyncpg_dsn


def operator_dsn() -> str:
    return DatabaseSettings().asyncpg_dsn


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


async def connect(url: str, **kwargs) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=10, **kwargs)


def test_the_services_with_a_database_are_those_with_a_role():
    pg_roles = _load_pg_roles()
    schemas = {
        path.parent.name: importlib.import_module(f"services.{path.parent.name}.tables").SCHEMA
        for path in (ROOT / "services").glob("*/tables.py")
    }
    assert schemas == {name: name for name in pg_roles.SERVICES}, "a service's schema is named after it"
    assert set(pg_roles.SERVICES) == set(SERVICES)


def _load_pg_roles():
    spec = importlib.util.spec_from_file_location("pg_roles", ROOT / "infra" / "local" / "pg_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_url_files_and_passwords_are_private_and_verify_the_server():
    assert stat.S_IMODE((PKI / "pg").stat().st_mode) == 0o700
    assert private(PKI / "pg-users.json")
    passwords = json.loads((PKI / "pg-users.json").read_text())
    for service in SERVICES:
        path = PKI / "pg" / f"{service}.url"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        url = urlsplit(service_url(service))
        assert url.username == service and url.password == passwords[service]
        assert parse_qs(url.query) == {"sslmode": ["verify-full"], "sslrootcert": [str(PKI / "ca.pem")]}
    operator = parse_qs(urlsplit(os.environ["MLOPS_DATABASE_URL"]).query)
    assert operator["sslmode"] == ["verify-full"] and Path(operator["sslrootcert"][0]).is_file()


async def test_each_service_logs_in_as_itself_over_verified_tls_through_sqlalchemy_and_asyncpg():
    for service in SERVICES:
        database = Database(DatabaseSettings(url=service_url(service)))
        try:
            async with database.engine.connect() as connection:
                user, ssl = (
                    await connection.execute(
                        text("SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                    )
                ).one()
            assert (user, ssl) == (service, True)
            raw = await database.raw_connection()  # the outbox relay's LISTEN connection
            try:
                assert await raw.fetchval("SELECT current_user") == service
            finally:
                await raw.close()
        finally:
            await database.close()


async def test_a_service_role_cannot_read_or_write_another_services_schema(unique: str):
    table = f"tests_roles_{unique}"
    owner_conn = {service: await connect(dsn(service)) for service in SERVICES}
    try:
        for service, conn in owner_conn.items():
            await conn.execute(f'CREATE TABLE "{service}"."{table}" (id int PRIMARY KEY, secret text)')
            await conn.execute(f'INSERT INTO "{service}"."{table}" VALUES (1, \'of {service}\')')
        for service, conn in owner_conn.items():
            assert await conn.fetchval(f'SELECT secret FROM "{service}"."{table}"') == f"of {service}"
            for other in SERVICES:
                if other == service:
                    continue
                for statement in (
                    f'SELECT secret FROM "{other}"."{table}"',
                    f'INSERT INTO "{other}"."{table}" VALUES (2, \'from {service}\')',
                    f'DELETE FROM "{other}"."{table}"',
                    f'CREATE TABLE "{other}"."{table}_by_{service}" (id int)',
                    f'DROP TABLE "{other}"."{table}"',
                ):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute(statement)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f'CREATE TABLE public."{table}_by_{service}" (id int)')
        # the operator keeps its broad rights (tests migrate every service's schema in-process)
        operator = await connect(operator_dsn())
        try:
            for service in SERVICES:
                assert await operator.fetchval(f'SELECT secret FROM "{service}"."{table}"') == f"of {service}"
        finally:
            await operator.close()
    finally:
        for service, conn in owner_conn.items():
            await conn.execute(f'DROP TABLE IF EXISTS "{service}"."{table}"')
            await conn.close()


async def test_a_service_role_reaches_no_other_database():
    url = urlsplit(dsn("registry"))
    for other in ("postgres", "template1"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
            await connect(url._replace(path=f"/{other}").geturl())


async def test_a_connection_without_tls_is_refused():
    for url in (dsn("registry"), operator_dsn()):
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
            await connect(url.split("?")[0], ssl=False)


def _foreign_ca(folder: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the stack's CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / "foreign-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


async def test_a_server_not_signed_by_the_stacks_ca_is_refused(tmp_path: Path):
    url = service_url("registry").replace(
        quote(str(PKI / "ca.pem"), safe=""), quote(str(_foreign_ca(tmp_path)))
    )
    assert "foreign-ca.pem" in url
    database = Database(DatabaseSettings(url=url))
    try:
        with pytest.raises(Exception, match="certificate verify failed"):
            async with database.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    finally:
        await database.close()


def test_up_upgrades_an_older_server_and_hands_it_the_operators_tables(unique: str):
    """An older stack: pg_hba.conf without TLS, service tables created as the operator."""
    table = f"tests_handover_{unique}"

    async def as_operator(statement: str) -> object:
        conn = await connect(operator_dsn())
        try:
            return await conn.fetchval(statement)
        finally:
            await conn.close()

    asyncio.run(as_operator(f'CREATE TABLE registry."{table}" (id serial PRIMARY KEY)'))
    try:
        owner = f"SELECT relowner::regrole::text FROM pg_class WHERE oid = 'registry.\"{table}\"'::regclass"
        assert asyncio.run(as_operator(owner)) != "registry"
        data = (STACK / "postgres" / "data").resolve()
        hba = data / "pg_hba.conf"
        with hba.open("a") as f:
            f.write("host all all 127.0.0.1/32 scram-sha-256\n")
        up = subprocess.run(
            ["bash", "infra/local/stack.sh", "up", "postgres"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        assert re.search(r"postgres\s+configuration changed \(pg_hba.conf.*restarting", up.stdout), up.stdout
        assert "host all all" not in hba.read_text()
        assert asyncio.run(as_operator(owner)) == "registry"
        assert asyncio.run(as_operator("SHOW ssl")) == "on"
        again = subprocess.run(
            ["bash", "infra/local/stack.sh", "up", "postgres"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    finally:
        asyncio.run(as_operator(f'DROP TABLE IF EXISTS registry."{table}"'))


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]
