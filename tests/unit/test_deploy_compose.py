"""docker-compose.yml secured as the local stack is, checked without a container engine: its one-shot
`pki` job run as a script into a folder (the volume), each container's part of it and its mounts, the
services' gRPC settings against what infra/local/services.sh exports, production accepting them, the
health probe and a peer over TLS against a real gRPC server, and the broker run by the compose file's
own command on the configuration the job writes, with the `kafka-acls` job applying the ACL table, and
PostgreSQL run on the compose file's TLS settings with the `postgres-roles` job giving each service its
own role and schema."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import boto3
import grpc
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError
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
from tests.unit.test_deploy_tools import CACHE, REPO, SERVICES

sys.path.insert(0, str(REPO / "infra/local"))
import pg_roles

COMPOSE = REPO / "docker-compose.yml"
MOUNT = "/etc/mlops/pki"
"""Where each service finds its part of the volume `pki`."""
KAFKA_MOUNT = "/etc/kafka/mlops"
KAFKA_FILES = {"ca.pem", "broker.p12", "cluster-id", "scram", "admin.properties", "server.properties"}
SERVICE_FILES = {
    "ca.pem",
    "cert.pem",
    "key.pem",
    "tokens",
    "aws-credentials",
    "secrets",
    "secrets/MLOPS_KAFKA_SASL_PASSWORD",
}
DATABASE_URL_FILE = "secrets/MLOPS_DATABASE_URL"
"""Every service's but inference's, which has no database."""
POSTGRES_MOUNT = "/etc/postgresql/mlops"
POSTGRES_FILES = {"server.crt", "server.key", "pg_hba.conf"}

_VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def example_env() -> dict[str, str]:
    text = (REPO / ".env.example").read_text()
    return dict(re.findall(r"^(\w+)=(.*)$", text, re.M))


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: `$$`, `$X`, `${X}`, `${X:-default}`, `${X-default}`, `${X:?error}`."""

    def one(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        name, operator, argument = match[1] or match[4], match[2], match[3]
        value = env.get(name)
        if operator in (":-", "-") and (value is None or (operator == ":-" and not value)):
            return argument
        if operator in (":?", "?") and not value:
            raise ValueError(f"{name}: {argument}")
        return value or ""

    return _VARIABLE.sub(one, text)


def script(anchor: str) -> str:
    return interpolate(compose()[anchor], {})


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the local stack's settings (tests/conftest.py loads them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "OTEL_", "AWS_", "GRPC_"))}
    return env | extra


def service_env(name: str, out: Path, **overrides: str) -> dict[str, str]:
    """The service's environment as compose gives it, its mount mapped onto the job's output folder."""
    env = compose()["services"][name]["environment"]
    values = {key: interpolate(str(value), example_env()) for key, value in env.items()}
    mapped = {key: value.replace(MOUNT, str(out / "services" / name)) for key, value in values.items()}
    return mapped | overrides


def run_pki_job(out: Path) -> subprocess.CompletedProcess[str]:
    job_env = compose()["services"]["pki"]["environment"]
    result = subprocess.run(
        [sys.executable, "-c", script("x-pki-init"), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=clean_env(**{k: interpolate(v, example_env()) for k, v in job_env.items()}),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """The volume `pki` after the job ran once."""
    folder = tmp_path_factory.mktemp("volume")
    made = run_pki_job(folder).stdout
    assert "made ca.pem" in made and "made grpc/registry.key" in made, made
    return folder


def users(out: Path) -> dict[str, str]:
    return json.loads((out / "pki" / "kafka-users.json").read_text())


def s3_secrets(out: Path) -> dict[str, str]:
    return json.loads((out / "pki" / "s3-users.json").read_text())


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )


def uids() -> tuple[int, int, int]:
    """The owners the job gives the broker's, the services' and PostgreSQL's parts, as its script states them."""
    found = re.search(r"KAFKA_UID, SERVICE_UID, POSTGRES_UID = (\d+), (\d+), (\d+)", compose()["x-pki-init"])
    assert found, "the pki job no longer names KAFKA_UID, SERVICE_UID and POSTGRES_UID"
    return int(found[1]), int(found[2]), int(found[3])


def service_files(name: str) -> set[str]:
    return SERVICE_FILES | ({DATABASE_URL_FILE} if name in pg_roles.SERVICES else set())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            assert published == [f"127.0.0.1:{port}:{port}"]
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


def use_env(monkeypatch, env: dict[str, str]) -> None:
    for key in list(os.environ):
        if key.startswith(("MLOPS_", "OTEL_", "AWS_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


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


# --- Kafka -----------------------------------------------------------------------------------------


def kafka_libs() -> Path:
    version = compose()["services"]["kafka"]["image"].split(":")[1]
    libs = CACHE / f"kafka-{version}" / "libs"
    if shutil.which("java") is None or not libs.is_dir():
        pytest.fail(
            f"Kafka {version} (the compose file's image) is not installed at {libs}: run infra/local/install.sh"
        )
    return libs


def fake_kafka_home(home: Path, libs: Path) -> Path:
    """/opt/kafka/bin's three scripts the compose file runs, on the same Kafka's classes."""
    classes = {
        "kafka-storage.sh": "kafka.tools.StorageTool",
        "kafka-server-start.sh": "kafka.Kafka",
        "kafka-configs.sh": "kafka.admin.ConfigCommand",
    }
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True)
    for script_name, main in classes.items():
        heap = "512m" if main == "kafka.Kafka" else "256m"
        path = bin_dir / script_name
        path.write_text(f'#!/bin/sh\nexec java -Xmx{heap} -cp "{libs}/*" {main} "$@"\n')
        path.chmod(0o755)
    return home


def translate(text: str, paths: dict[str, str], ports: dict[int, int]) -> str:
    for container, host in paths.items():
        text = text.replace(container, host)
    for container_port, host_port in ports.items():
        text = re.sub(rf"(?<=[:]){container_port}\b", str(host_port), text)
    return text


def test_the_broker_runs_on_the_compose_command_with_every_identity_and_the_acl_table(out, tmp_path) -> None:
    libs = kafka_libs()
    home = fake_kafka_home(tmp_path / "opt-kafka", libs)
    conf, data = tmp_path / "kafka-conf", tmp_path / "kafka-data"
    data.mkdir()
    ports = {29092: free_port(), 9092: free_port(), 9093: free_port()}
    paths = {KAFKA_MOUNT: str(conf), "/var/lib/kafka/data": str(data), "/opt/kafka": str(home)}
    shutil.copytree(out / "kafka", conf)
    for name in ("server.properties", "admin.properties"):
        (conf / name).write_text(translate((out / "kafka" / name).read_text(), paths, ports))
    kafka = compose()["services"]["kafka"]
    command = translate(interpolate(kafka["command"][2], {}), paths, ports)
    log = (tmp_path / "kafka.log").open("w")
    broker = subprocess.Popen(
        ["/bin/sh", "-c", command], stdout=log, stderr=subprocess.STDOUT, env=clean_env()
    )
    try:
        # ready: the compose file's health check passes (bounded; the broker's log on failure)
        health = translate(interpolate(kafka["healthcheck"]["test"][1], {}), paths, ports)
        deadline = time.monotonic() + 120
        while subprocess.run(["/bin/sh", "-c", health], capture_output=True, env=clean_env()).returncode != 0:
            assert broker.poll() is None, (tmp_path / "kafka.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "kafka.log").read_text()[-3000:]
            time.sleep(1)

        # the services' listener presents a certificate for `kafka`, verified by the CA they hold
        context = ssl.create_default_context(cafile=str(out / "services" / "registry" / "ca.pem"))
        with socket.create_connection(("127.0.0.1", ports[29092])) as raw:
            with context.wrap_socket(raw, server_hostname="kafka"):
                pass
        with socket.create_connection(("127.0.0.1", ports[29092])) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                context.wrap_socket(raw, server_hostname="registry")

        # the kafka-acls job, as compose runs it, on the services' listener: every identity logs in
        job = compose()["services"]["kafka-acls"]
        result = subprocess.run(
            [sys.executable, "-c", script("x-kafka-acls"), str(out / "pki")],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=clean_env(MLOPS_KAFKA_SECURE_BOOTSTRAP=f"127.0.0.1:{ports[29092]}"),
            timeout=120,
        )
        assert job["environment"] == {"MLOPS_KAFKA_SECURE_BOOTSTRAP": "kafka:29092"}
        assert result.returncode == 0, result.stdout + result.stderr
        created = int(re.search(r"ACLs: (\d+) created", result.stdout)[1])
        assert created == len(acl.bindings()), result.stdout

        # and the ACLs hold: upstream writes its intents, not the trainer's facts
        asyncio.run(upstream_writes(out, ports[9092]))
    finally:
        broker.terminate()
        try:
            broker.wait(30)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
        log.close()


async def upstream_writes(out: Path, port: int) -> None:
    kafka = KafkaSettings(
        bootstrap=f"127.0.0.1:{port}",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="upstream",
        sasl_password=users(out)["upstream"],
        ssl_cafile=out / "clients" / "ca.pem",
        request_timeout_ms=10_000,
    )
    producer = AIOKafkaProducer(**kafka.client_options())
    await producer.start()
    try:
        await producer.send_and_wait("mlops.data.committed", b"{}", key=b"wine")
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait("mlops.model.trained", b"{}", key=b"wine")
    finally:
        await producer.stop()


# --- PostgreSQL ------------------------------------------------------------------------------------


def test_postgres_certificate_names_postgres_and_no_service_certificate_does(out) -> None:
    ca = x509.load_pem_x509_certificate((out / "pki" / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((out / "postgres" / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    assert names(server) == {"127.0.0.1", "localhost", "postgres"}
    assert (out / "postgres" / "server.crt").read_bytes() == (out / "pki" / "postgres.pem").read_bytes()
    for name in acl.SERVICES:
        cert = x509.load_pem_x509_certificate((out / "services" / name / "cert.pem").read_bytes())
        assert "postgres" not in names(cert), f"svc:{name} could pass for the database"
    rules = [line.split() for line in (out / "postgres" / "pg_hba.conf").read_text().splitlines()]
    rules = [rule for rule in rules if rule and not rule[0].startswith("#")]
    assert {rule[0] for rule in rules} == {"local", "hostssl", "hostnossl"}
    assert ["hostnossl", "all", "all", "all", "reject"] in rules


def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not found:
        pytest.fail("PostgreSQL's server binaries are not installed: run infra/local/install.sh")
    return found[-1].parent


def as_postgres_user(path: Path) -> list[str]:
    """PostgreSQL refuses to run as root: as root, the `postgres` system user owns `path` and runs it."""
    if os.geteuid() != 0:
        return []
    import pwd

    user = pwd.getpwnam("postgres")
    for item in [path, *path.rglob("*")]:
        os.chown(item, user.pw_uid, user.pw_gid)
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]


async def pg_connect(url: str, **kwargs):
    import asyncpg

    return await asyncpg.connect(DatabaseSettings(url=url).asyncpg_dsn, timeout=10, **kwargs)


async def check_service_roles(out: Path, port: int, env: dict[str, str]) -> None:
    import asyncpg

    for name in pg_roles.SERVICES:
        own = out / "services" / name
        url = (own / DATABASE_URL_FILE).read_text()
        url = url.replace("@postgres:5432/", f"@127.0.0.1:{port}/")
        url = url.replace(urllib.parse.quote(MOUNT, safe=""), urllib.parse.quote(str(own), safe=""))
        connection = await pg_connect(url)
        try:
            assert await connection.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            await connection.execute(f'CREATE TABLE IF NOT EXISTS "{name}".probe (id int)')
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute("CREATE SCHEMA stray")
            other = next(s for s in pg_roles.SERVICES if s != name)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(f'CREATE TABLE "{other}".intruder (id int)')
        finally:
            await connection.close()
    # without TLS, no role gets in
    plain = f"postgresql://{env['MLOPS_PG_USER']}:{env['MLOPS_PG_PASSWORD']}@127.0.0.1:{port}/postgres"
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await pg_connect(plain, ssl=False)


def test_postgres_serves_tls_only_and_the_roles_job_gives_each_service_its_own_schema(out) -> None:
    bin_dir = pg_bin()
    env = {
        k: interpolate(str(v), example_env())
        for k, v in compose()["services"]["postgres"]["environment"].items()
    }
    job_env = compose()["services"]["postgres-roles"]["environment"]
    job_env = {k: interpolate(str(v), example_env()) for k, v in job_env.items()}
    root = Path(tempfile.mkdtemp(prefix="mlops-compose-pg-", dir="/var/tmp"))
    try:
        root.chmod(0o755)
        # the image's first run: initdb with POSTGRES_USER as the superuser, then POSTGRES_DB
        data, conf, sock = root / "data", root / "conf", root / "sock"
        shutil.copytree(out / "postgres", conf)
        sock.mkdir()
        (root / "pw").write_text(env["POSTGRES_PASSWORD"])
        runas = as_postgres_user(root)
        subprocess.run(
            [*runas, bin_dir / "initdb", "-D", data, "-U", env["POSTGRES_USER"], "--pwfile", root / "pw",
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"],
            check=True, capture_output=True, env=clean_env(),
        )  # fmt: skip
        port = free_port()
        command = [
            str(c).replace(POSTGRES_MOUNT, str(conf)) for c in compose()["services"]["postgres"]["command"]
        ]
        assert command[0] == "postgres"
        log = (root / "postgres.log").open("w")
        server = subprocess.Popen(
            [*runas, bin_dir / "postgres", "-D", data, "-c", "listen_addresses=127.0.0.1", "-p", str(port),
             "-c", f"unix_socket_directories={sock}", *command[1:]],
            stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
        )  # fmt: skip
        try:
            # ready: the compose file's health check passes (bounded; the server's log on failure)
            health = interpolate(compose()["services"]["postgres"]["healthcheck"]["test"][1], {})
            health_env = clean_env(**env, PGPORT=str(port), PATH=f"{bin_dir}:{os.environ['PATH']}")
            deadline = time.monotonic() + 60
            while subprocess.run(["/bin/sh", "-c", health], capture_output=True, env=health_env).returncode:
                assert server.poll() is None, (root / "postgres.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (root / "postgres.log").read_text()[-3000:]
                time.sleep(0.5)
            subprocess.run(
                [bin_dir / "psql", "-X", "-h", sock, "-p", str(port), "-U", env["POSTGRES_USER"], "-d", "postgres",
                 "-c", f'CREATE DATABASE "{env["POSTGRES_DB"]}"'],
                check=True, capture_output=True, env=clean_env(),
            )  # fmt: skip

            # the server presents the certificate for `postgres` (after PostgreSQL's SSLRequest)
            context = ssl.create_default_context(cafile=str(out / "pki" / "ca.pem"))
            for hostname, verified in (("postgres", True), ("registry", False)):
                with socket.create_connection(("127.0.0.1", port)) as raw:
                    raw.sendall((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
                    assert raw.recv(1) == b"S"
                    if verified:
                        context.wrap_socket(raw, server_hostname=hostname).close()
                    else:
                        with pytest.raises(ssl.SSLCertVerificationError):
                            context.wrap_socket(raw, server_hostname=hostname)

            # the roles job, as compose runs it, twice (idempotent)
            assert job_env.pop("MLOPS_PG_ADDR") == "postgres:5432"
            for _ in range(2):
                result = subprocess.run(
                    [sys.executable, "-c", script("x-postgres-roles"), str(out / "pki")],
                    capture_output=True, text=True, cwd=REPO, timeout=120,
                    env=clean_env(**job_env, MLOPS_PG_ADDR=f"127.0.0.1:{port}"),
                )  # fmt: skip
                assert result.returncode == 0, result.stdout + result.stderr
                assert env["POSTGRES_PASSWORD"] not in result.stdout + result.stderr
            asyncio.run(check_service_roles(out, port, job_env))
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- S3 --------------------------------------------------------------------------------------------


def versitygw_bin() -> Path:
    path = CACHE / "bin" / "versitygw"
    if not path.is_file():
        pytest.fail(f"versitygw is not installed at {path}: run infra/local/install.sh")
    return path


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def s3_client(endpoint: str, **credentials: str):
    from botocore.config import Config

    return boto3.session.Session(**credentials).client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(s3={"addressing_style": "path"})
    )


def test_s3_accounts_job_gives_each_service_only_what_its_code_uses(out, tmp_path, monkeypatch) -> None:
    from botocore.exceptions import ClientError

    s3 = compose()["services"]["s3"]
    env = {k: interpolate(str(v), example_env()) for k, v in s3["environment"].items()}
    port = free_port()
    data = tmp_path / "s3"
    # the entrypoint's folders, then versitygw on the compose file's options (port and folders mapped)
    prepare = s3["entrypoint"][2].split(" && ")[0].replace("/data", str(data))
    subprocess.run(["/bin/sh", "-c", prepare], check=True)
    options = [
        str(o).replace("/data", str(data)).replace(":9000", f"127.0.0.1:{port}") for o in s3["command"]
    ]
    log_path = tmp_path / "s3.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [versitygw_bin(), *options], stdout=log, stderr=subprocess.STDOUT, env=clean_env(**env)
    )
    try:
        wait_for_port(port, server, log_path)
        job = compose()["services"]["s3-bucket"]
        job_env = {k: interpolate(str(v), example_env()) for k, v in job["environment"].items()}
        endpoint = f"http://127.0.0.1:{port}"
        assert job_env.pop("MLOPS_ARTIFACT_S3_ENDPOINT_URL") == "http://s3:9000"
        for _ in range(2):  # idempotent
            result = subprocess.run(
                [sys.executable, "-c", script("x-s3-accounts"), str(out / "pki")],
                capture_output=True,
                text=True,
                cwd=REPO,
                timeout=120,
                env=clean_env(**job_env, MLOPS_ARTIFACT_S3_ENDPOINT_URL=endpoint),
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert job_env["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr
        assert "account trainer created" in result.stdout or "as they were" in result.stdout

        bucket = job_env["MLOPS_ARTIFACT_ROOT"].removeprefix("s3://")
        root = s3_client(
            endpoint,
            aws_access_key_id=job_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=job_env["AWS_SECRET_ACCESS_KEY"],
        )
        root.put_object(Bucket=bucket, Key="datasets/wine/abc/data.csv", Body=b"a,b\n1,2\n")

        def client_of(name: str):
            """The service's S3 client as compose configures it: its credentials file, no key variables."""
            use_env(monkeypatch, service_env(name, out))
            return s3_client(endpoint)

        def refused(call) -> None:
            with pytest.raises(ClientError) as error:
                call()
            assert error.value.response["Error"]["Code"] == "AccessDenied"

        trainer = client_of("trainer")
        assert (
            trainer.get_object(Bucket=bucket, Key="datasets/wine/abc/data.csv")["Body"].read()
            == b"a,b\n1,2\n"
        )
        trainer.put_object(Bucket=bucket, Key="models/wine/abc/model.onnx", Body=b"onnx")
        refused(lambda: trainer.put_object(Bucket=bucket, Key="datasets/wine/def/data.csv", Body=b"x"))
        refused(lambda: trainer.delete_object(Bucket=bucket, Key="models/wine/abc/model.onnx"))
        registry = client_of("registry")
        registry.get_object(Bucket=bucket, Key="datasets/wine/abc/data.csv")
        refused(lambda: registry.get_object(Bucket=bucket, Key="models/wine/abc/model.onnx"))
        inference = client_of("inference")
        assert inference.get_object(Bucket=bucket, Key="models/wine/abc/model.onnx")["Body"].read() == b"onnx"
        refused(lambda: inference.list_objects_v2(Bucket=bucket))
        refused(lambda: client_of("deployer").get_object(Bucket=bucket, Key="datasets/wine/abc/data.csv"))
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
