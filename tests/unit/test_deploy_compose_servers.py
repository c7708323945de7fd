"""docker-compose.yml's servers run without a container engine on what its `pki` job writes: the broker
run by the compose file's own command on the configuration the job writes, with the `kafka-acls` job
applying the ACL table; PostgreSQL run on the compose file's TLS settings with the `postgres-roles` job
giving each service its own role and schema; the S3 server with the `s3-bucket` job giving each service
only what its code uses."""

# The out fixture, imported from deploy_compose_helpers: pytest hands it to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import boto3
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError
from cryptography import x509

from mlops.bus import acl
from mlops.settings import (
    DatabaseSettings,
    KafkaSettings,
)
from tests.unit.deploy_compose_helpers import (
    DATABASE_URL_FILE,
    KAFKA_MOUNT,
    MOUNT,
    POSTGRES_MOUNT,
    clean_env,
    compose,
    example_env,
    free_port,
    interpolate,
    names,
    out,  # noqa: F401 - fixture
    pg_roles,
    script,
    service_env,
    use_env,
    users,
)
from tests.unit.test_deploy_tools import CACHE, REPO

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
        registry.get_object(Bucket=bucket, Key="models/wine/abc/model.onnx")  # serves registered models back
        refused(lambda: registry.put_object(Bucket=bucket, Key="datasets/wine/def/data.csv", Body=b"x"))
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
