"""docker-compose.yml secured as the local stack is, checked without a container engine: its one-shot
`pki` job run as a script into a folder (the volume), each container's part of it and its mounts, the
services' gRPC settings against what infra/local/services.sh exports, production accepting them, and the
health probe and a peer over TLS against a real gRPC server."""

# The out fixture, imported from deploy_compose_helpers: pytest hands it to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import re
import ssl
import subprocess
import sys
import urllib.parse
from pathlib import Path

import boto3
import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlops.bus import acl
from mlops.grpc import GrpcServer
from mlops.grpc.client import open_channel
from mlops.settings import (
    DatabaseSettings,
    GrpcClientSettings,
    GrpcServerSettings,
    KafkaSettings,
    ServiceSettings,
)
from tests.unit.deploy_compose_helpers import (
    KAFKA_FILES,
    KAFKA_MOUNT,
    MOUNT,
    POSTGRES_FILES,
    POSTGRES_MOUNT,
    clean_env,
    compose,
    files,
    interpolate,
    mode,
    names,
    out,  # noqa: F401 - fixture
    pg_roles,
    run_pki_job,
    s3_secrets,
    service_env,
    service_files,
    uids,
    use_env,
    users,
)
from tests.unit.test_deploy_tools import REPO, SERVICES

# --- the pki job and the volume ------------------------------------------------------------------


def test_the_pki_job_runs_again_without_changing_anything(out) -> None:
    before = files(out)
    again = run_pki_job(out).stdout
    assert "made" not in again, again
    assert files(out) == before


def test_each_container_gets_its_own_part_private_to_its_user(out) -> None:
    kafka_uid, service_uid, postgres_uid = uids()
    kafka, postgres = out / "kafka", out / "postgres"
    assert {str(p.relative_to(kafka)) for p in kafka.rglob("*")} == KAFKA_FILES
    assert {str(p.relative_to(postgres)) for p in postgres.rglob("*")} == POSTGRES_FILES
    ca = x509.load_pem_x509_certificate((out / "pki" / "ca.pem").read_bytes())
    for name in acl.SERVICES:
        own = out / "services" / name
        assert {str(p.relative_to(own)) for p in own.rglob("*")} == service_files(name), name
        cert = x509.load_pem_x509_certificate((own / "cert.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"svc:{name}"
        assert (own / "key.pem").read_bytes() == (out / "pki" / "grpc" / f"{name}.key").read_bytes()
        assert (own / "tokens").read_bytes() == (out / "pki" / "grpc" / "tokens").read_bytes()
        assert (own / "secrets" / "MLOPS_KAFKA_SASL_PASSWORD").read_text() == users(out)[name]
    parts = [(kafka, kafka_uid), (postgres, postgres_uid)]
    for part, uid in parts + [(out / "services" / n, service_uid) for n in acl.SERVICES]:
        for path in [part, *part.rglob("*")]:
            assert mode(path) == (0o700 if path.is_dir() else 0o600), path
            if os.geteuid() == 0:  # only root can give files away, as the job does in its container
                assert path.stat().st_uid == uid, path
    kept = {p.name for p in (out / "services").rglob("*")} | {p.name for p in kafka.rglob("*")}
    assert "ca.key" not in kept | {p.name for p in postgres.rglob("*")}


def test_the_broker_certificate_names_kafka_for_the_services_and_localhost_for_people(out) -> None:
    ca = x509.load_pem_x509_certificate((out / "pki" / "ca.pem").read_bytes())
    broker = x509.load_pem_x509_certificate((out / "pki" / "broker.pem").read_bytes())
    broker.verify_directly_issued_by(ca)
    assert names(broker) == {"127.0.0.1", "localhost", "kafka"}
    service = x509.load_pem_x509_certificate((out / "services" / "registry" / "cert.pem").read_bytes())
    assert "localhost" in names(service), (
        "the services' clients expect `localhost` in their peers' certificates"
    )


def test_people_find_their_certificates_tokens_and_kafka_clients(out) -> None:
    clients = out / "clients"
    for person in ("admin", "operator", "viewer"):
        for ext in ("pem", "key", "token"):
            assert (clients / f"{person}.{ext}").is_file()
    for identity in ("upstream", "admin"):
        text = (clients / f"{identity}.properties").read_text()
        lines = dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
        assert lines["bootstrap.servers"] == "127.0.0.1:9092"
        assert lines["security.protocol"] == "SASL_SSL"
        assert lines["sasl.username"] == identity and lines["sasl.password"] == users(out)[identity]
        assert lines["ssl.ca.location"] == "ca.pem"
        assert mode(clients / f"{identity}.properties") == 0o600


def test_each_container_mounts_only_its_part_read_only(out) -> None:
    services = compose()["services"]
    kafka_uid, service_uid, _ = uids()
    mounts: dict[str, list[dict]] = {}
    for name, spec in services.items():
        for volume in spec.get("volumes", []):
            if isinstance(volume, dict) and volume["source"] == "pki":
                mounts.setdefault(name, []).append(volume)
            else:
                assert not str(volume).startswith("pki:") or name == "pki", (name, volume)
    assert services["pki"]["volumes"][0] == "pki:/pki"
    assert services["pki"]["user"] == "0:0"
    expected = {name: (f"services/{name}", MOUNT) for name in acl.SERVICES}
    expected |= {
        "kafka": ("kafka", KAFKA_MOUNT),
        "kafka-acls": ("pki", "/pki"),
        "postgres": ("postgres", POSTGRES_MOUNT),
        "postgres-roles": ("pki", "/pki"),
        "s3-bucket": ("pki", "/pki"),
        "console": ("services/console", MOUNT),  # the CA alone
    }
    assert set(mounts) == set(expected)
    for name, (subpath, target) in expected.items():
        [volume] = mounts[name]
        # the jobs that read the roles' and accounts' secrets keep their files at 0600 (a chmod)
        assert volume.get("read_only", False) is (name not in ("postgres-roles", "s3-bucket")), name
        assert volume["volume"] == {"subpath": subpath}, name
        assert volume["target"] == target, name
        assert (out / subpath).is_dir(), subpath
    assert services["kafka"]["user"] == f"{kafka_uid}:{kafka_uid}"
    dockerfile_user = re.findall(r"^USER (\d+)", (REPO / "Dockerfile").read_text(), re.M)[-1]
    assert int(dockerfile_user) == service_uid
    for name in [*acl.SERVICES, "kafka", "kafka-acls", "postgres", "postgres-roles", "s3-bucket"]:
        assert services[name]["depends_on"]["pki"] == {"condition": "service_completed_successfully"}
    for name in acl.SERVICES:
        assert services[name]["depends_on"]["kafka-acls"] == {"condition": "service_completed_successfully"}
        assert services[name]["depends_on"]["postgres-roles"] == {
            "condition": "service_completed_successfully"
        }


# --- gRPC ------------------------------------------------------------------------------------------


def grpc_security(name: str, port: int, pki: Path) -> dict[str, str]:
    """What infra/local/services.sh's grpc_security exports for a service, run by bash."""
    text = (REPO / "infra/local/services.sh").read_text()
    function = re.search(r"^grpc_security\(\) \{\n.*?^\}\n", text, re.M | re.S)
    assert function, "grpc_security() not found in infra/local/services.sh"
    command = f"PKI={pki}\n{function[0]}\ngrpc_security {name} {port}\nenv -0"
    output = subprocess.run(["bash", "-c", command], capture_output=True, check=True, env={}).stdout
    env = dict(item.split("=", 1) for item in output.decode().split("\0") if "=" in item)
    return {k: v for k, v in env.items() if k.startswith("MLOPS_GRPC_")}


def test_grpc_settings_are_those_services_sh_exports(out) -> None:
    for name, (port, _) in SERVICES.items():
        local = grpc_security(name, port, out / "pki")
        composed = {k: v for k, v in service_env(name, out).items() if k.startswith("MLOPS_GRPC_")}
        # the one addition: peers are dialled by service name, their certificates name localhost
        assert composed.pop("MLOPS_GRPC_CLIENT_SERVER_NAME") == "localhost"
        assert set(composed) == set(local), name
        for key, value in local.items():
            if value.startswith("/"):
                assert Path(composed[key]).read_bytes() == Path(value).read_bytes(), (name, key)
            else:
                assert composed[key] == value, (name, key)


def test_token_ports_are_published_on_loopback_next_to_the_main_ports() -> None:
    services = compose()["services"]
    for name, (port, _) in SERVICES.items():
        published = services[name].get("ports", [])
        env = services[name]["environment"]
        if name == "inference":
            assert "MLOPS_GRPC_TOKEN_PORT" not in env and "MLOPS_GRPC_TLS_CLIENT_CA" not in env
            # gRPC, and the Open Inference Protocol over REST on 8000; both take tokens on the one port
            assert sorted(published) == sorted([f"127.0.0.1:{port}:{port}", "127.0.0.1:8000:8000"])
            continue
        assert env["MLOPS_GRPC_TOKEN_PORT"] == str(port + 10)
        if published:
            assert published == [f"127.0.0.1:{port}:{port}", f"127.0.0.1:{port + 10}:{port + 10}"], name
    for spec in services.values():
        for mapping in spec.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), mapping


def service_settings_class(name: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"services.{name}.settings")
    return getattr(module, f"{name.capitalize()}Settings")


def test_production_accepts_every_services_kafka_and_grpc_settings(out, monkeypatch) -> None:
    assert compose()["x-service-env"]["MLOPS_ENV"] == "${MLOPS_ENV:-development}"
    for name, (port, _) in SERVICES.items():
        use_env(monkeypatch, service_env(name, out, MLOPS_ENV="production"))
        kafka = KafkaSettings()
        assert (kafka.security_protocol, kafka.sasl_mechanism, kafka.sasl_username) == (
            "SASL_SSL",
            "SCRAM-SHA-512",
            name,
        )
        assert kafka.bootstrap == "kafka:29092"
        assert kafka.sasl_password.get_secret_value() == users(out)[name], "the password comes from its file"
        assert kafka.client_options()["ssl_context"].verify_mode == ssl.CERT_REQUIRED
        server = service_settings_class(name)().grpc_server()
        assert server.port == port and server.auth and server.tls_cert is not None
        assert (server.tls_client_ca is None) == (name == "inference")
        assert server.token_port == (None if name == "inference" else port + 10)
        client = GrpcClientSettings()
        assert client.secure and client.cert_file is not None and client.server_name == "localhost"
        if name in pg_roles.SERVICES:
            # its own role, from the file in its part of the volume, TLS verified against its CA
            database = urllib.parse.urlsplit(DatabaseSettings().asyncpg_dsn)
            query = dict(urllib.parse.parse_qsl(database.query))
            assert (database.username, database.hostname, database.port) == (name, "postgres", 5432)
            assert query == {"sslmode": "verify-full", "sslrootcert": f"{MOUNT}/ca.pem"}, name
            assert "MLOPS_DATABASE_URL" not in service_env(name, out), "a file, never a variable"
        # its own S3 account, from the file in its part of the volume
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(service_env(name, out))
        credentials = boto3.session.Session().get_credentials()
        assert credentials.access_key == name
        assert credentials.secret_key == s3_secrets(out)[name]
    # and the check can fail: without authorisation production refuses the server
    for key in ("MLOPS_GRPC_AUTH", "MLOPS_GRPC_TOKEN_FILE", "MLOPS_GRPC_TOKEN_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="production needs"):
        GrpcServerSettings()


async def probe(port: int, env: dict[str, str]) -> int:
    """The compose file's health check, run as Docker runs it: `python -c <probe> PORT`."""
    test = compose()["services"]["registry"]["healthcheck"]["test"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", interpolate(test[3], {}), str(port), env=clean_env(**env), cwd=REPO
    )
    return await asyncio.wait_for(process.wait(), 30)


@contextlib.asynccontextmanager
async def serving(env: dict[str, str], monkeypatch):
    use_env(monkeypatch, env)
    # on free ports: the running local stack may hold the composed ones
    token_port = 0 if "MLOPS_GRPC_TOKEN_PORT" in env else None
    server = GrpcServer(GrpcServerSettings(host="127.0.0.1", port=0, token_port=token_port))
    await server.start()
    await server.set_serving(True)
    try:
        yield server
    finally:
        await server.server.stop(None)


async def test_the_health_probe_answers_over_mutual_tls_and_over_inferences_tls(
    out, tmp_path, monkeypatch
) -> None:
    other = tmp_path / "other"
    run_pki_job(other)
    for name in ("registry", "inference"):
        env = service_env(name, out)
        async with serving(env, monkeypatch) as server:
            assert (server.settings.tls_client_ca is not None) == (name == "registry")
            assert await probe(server.port, env) == 0, name
            stranger = env | {"MLOPS_GRPC_CLIENT_CA_FILE": str(other / "services" / name / "ca.pem")}
            assert await probe(server.port, stranger) != 0, "a server the CA did not sign must fail the probe"


async def test_a_peer_reaches_a_service_as_compose_configures_both(out, monkeypatch) -> None:
    async with serving(service_env("registry", out), monkeypatch) as server:
        use_env(monkeypatch, service_env("deployer", out))
        peer = GrpcClientSettings()
        async with open_channel(f"127.0.0.1:{server.port}", security=peer, traced=False) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # the name the client expects is checked: one the certificate lacks fails the handshake
        wrong = peer.model_copy(update={"server_name": "registry"})
        async with open_channel(f"127.0.0.1:{server.port}", security=wrong, traced=False) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
