"""The registry benchmark's contenders: MLflow's tracking server driven by wrk, and the platform's
registry driven by ghz, each started, given the same state through its own API, measured and stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlops.registry.v1 import registry_pb2, registry_pb2_grpc
from tests.bench.harness import (
    BENCH_VENV,
    REPO,
    BenchError,
    Figures,
    Tools,
    free_port,
    ghz_load,
    running,
    wait_until,
)

REGISTRY_PROTO = "mlops/registry/v1/registry.proto"

MODEL = "bench-model"
ALIAS = "production"
DATASET = "bench-data"
METHOD = "mlops.registry.v1.Registry.GetModelVersion"
MLFLOW_DB = "mlflow_bench"

REGISTRY_DB = "registry_bench"
# Kafka topics and consumer group of the registry this script starts: its own, so that it neither takes
# events meant for a running registry nor puts its own events where the platform's services read
REGISTRY_TOPIC_PREFIX = "bench.registry."
REGISTRY_CONSUMER_GROUP = "bench-registry"

# the local stack's PostgreSQL and application role, as the rest of the project reads them
_PG = urllib.parse.urlsplit(
    os.environ.get("MLOPS_DATABASE_URL", "postgresql+asyncpg://mlops:mlops@127.0.0.1:5432/mlops")
)
PG_HOST, PG_PORT = _PG.hostname or "127.0.0.1", _PG.port or 5432
PG_USER, PG_PASSWORD = urllib.parse.unquote(_PG.username or "mlops"), urllib.parse.unquote(_PG.password or "")
PG_APP_DB = _PG.path.lstrip("/") or "mlops"


# ---------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------


def postgres_socket_dir() -> Path | None:
    """The local stack's unix socket directory, where the superuser may connect (see infra/local/stack.sh)."""
    stack = Path(os.environ.get("MLOPS_STACK_DIR", REPO / ".stack"))
    with contextlib.suppress(OSError, IndexError):
        lines = (stack / "postgres" / "data" / "postmaster.pid").read_text().splitlines()
        return Path(lines[4])  # the fifth line of postmaster.pid is the first socket directory
    return None


def ensure_database(name: str) -> None:
    """Creates database `name`, owned by the application role, unless it exists.

    The application role may not create databases; then the superuser does it through the stack's
    unix socket, as infra/local/stack.sh does for the platform's own database.
    """
    env = {**os.environ, "PGPASSWORD": PG_PASSWORD, "PGCONNECT_TIMEOUT": "5"}
    as_app = [
        "psql",
        "-X",
        "-q",
        "-tA",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        PG_HOST,
        "-p",
        str(PG_PORT),
        "-U",
        PG_USER,
        "-d",
        PG_APP_DB,
    ]
    exists = subprocess.run(
        [*as_app, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
        env=env,
        capture_output=True,
        text=True,
    )
    if exists.returncode != 0:
        raise BenchError(
            f"PostgreSQL at {PG_HOST}:{PG_PORT} refused role {PG_USER} (is the stack up? `make up`): "
            f"{exists.stderr.strip()}"
        )
    if exists.stdout.strip() == "1":
        return
    create = f'CREATE DATABASE "{name}" OWNER "{PG_USER}"'
    attempt = subprocess.run([*as_app, "-c", create], env=env, capture_output=True, text=True)
    if attempt.returncode == 0:
        return
    sock = postgres_socket_dir()
    if sock is None:
        raise BenchError(f"cannot create database {name}: {attempt.stderr.strip()}; create it as a superuser")
    runas = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [
            *runas,
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(sock),
            "-p",
            str(PG_PORT),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            create,
        ],
        check=True,
    )
    print(f"created database {name}", flush=True)


def mlflow_call(
    base: str, method: str, path: str, body: dict | None = None, params: dict | None = None
) -> dict:
    url = f"{base}/api/2.0/mlflow/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def mlflow_error_code(error: urllib.error.HTTPError) -> str:
    with contextlib.suppress(Exception):
        return json.loads(error.read()).get("error_code", "")
    return ""


def prepare_mlflow(base: str) -> str:
    """Registers `bench-model` with one version and points `production` at it; returns that version.

    The database outlives a run, so a state left by an earlier run is reused as it is.
    """
    with contextlib.suppress(urllib.error.HTTPError):
        found = mlflow_call(base, "GET", "registered-models/alias", params={"name": MODEL, "alias": ALIAS})
        return found["model_version"]["version"]
    try:
        mlflow_call(base, "POST", "registered-models/create", {"name": MODEL})
    except urllib.error.HTTPError as error:
        if mlflow_error_code(error) != "RESOURCE_ALREADY_EXISTS":
            raise
    sha = "0" * 64
    created = mlflow_call(
        base,
        "POST",
        "model-versions/create",
        {
            "name": MODEL,
            "source": f"s3://mlops/models/{MODEL}/{sha}/model.onnx",
            "description": "registry benchmark",
        },
    )
    version = created["model_version"]["version"]
    mlflow_call(base, "POST", "registered-models/alias", {"name": MODEL, "alias": ALIAS, "version": version})
    return version


def bench_mlflow(tools: Tools, args: argparse.Namespace, log_dir: Path) -> tuple[Figures, dict]:
    ensure_database(MLFLOW_DB)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # the driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which setup.sh does not install
    argv = [
        tools.mlflow,
        "server",
        "--backend-store-uri",
        f"postgresql+psycopg2://{urllib.parse.quote(PG_USER)}:{urllib.parse.quote(PG_PASSWORD)}@{PG_HOST}:{PG_PORT}/{MLFLOW_DB}",
        "--default-artifact-root",
        (log_dir / "mlflow-artifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(args.mlflow_workers),
    ]
    if args.mlflow_server == "gunicorn":
        argv += ["--gunicorn-opts", "--log-level warning"]  # gunicorn's sync workers serve Flask directly
    env = {**os.environ, "PATH": f"{BENCH_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    with running("mlflow", argv, env=env, log_dir=log_dir) as proc:
        # a real lookup through the model registry, so that the schema migrations are done too
        wait_until(
            "MLflow",
            lambda: bool(
                mlflow_call(base, "GET", "registered-models/search", params={"max_results": 1}) is not None
            ),
            deadline_s=args.start_timeout,
            proc=proc,
            log=log_dir / "mlflow.log",
        )
        version = prepare_mlflow(base)
        url = f"{base}/api/2.0/mlflow/registered-models/alias?" + urllib.parse.urlencode(
            {"name": MODEL, "alias": ALIAS}
        )
        check = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert check["model_version"]["version"] == version, check
        print(
            f"MLflow {tools.mlflow_version}: {MODEL}@{ALIAS} -> version {version}; "
            f"{args.mlflow_workers} {args.mlflow_server} workers",
            flush=True,
        )
        run_wrk(tools, url, args.concurrency, args.warmup)
        figures = run_wrk(tools, url, args.concurrency, args.duration)
    detail = {
        "version": tools.mlflow_version,
        "server": f"mlflow server ({args.mlflow_server})",
        "workers": args.mlflow_workers,
        "backend_store": f"postgresql://{PG_HOST}:{PG_PORT}/{MLFLOW_DB}",
        "request": f"GET {urllib.parse.urlsplit(url).path}?{urllib.parse.urlsplit(url).query}",
        "load_generator": "wrk",
    }
    return figures, detail


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS_MS[unit]


def run_wrk(tools: Tools, url: str, concurrency: int, duration_s: float) -> Figures:
    threads = max(1, min(concurrency, os.cpu_count() or 1))
    out = subprocess.run(
        [
            tools.wrk,
            "-t",
            str(threads),
            "-c",
            str(concurrency),
            "-d",
            f"{int(duration_s)}s",
            "--timeout",
            "10s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    try:
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        p50 = _wrk_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
        p99 = _wrk_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    except AttributeError as error:
        raise BenchError(f"cannot read wrk's output:\n{out}") from error
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return Figures(requests=requests, errors=errors, rps=rps, p50_ms=p50, p99_ms=p99)


# ---------------------------------------------------------------------------
# The platform's registry
# ---------------------------------------------------------------------------


def registry_serving(addr: str) -> bool:
    with grpc.insecure_channel(addr) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=2
        )
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def prepare_registry(addr: str) -> int:
    """The same state as MLflow's, through the registry's own API; returns the version `production` points to.

    Every call is idempotent on its natural key, so a registry that kept an earlier run's state
    answers with the same version.
    """
    sha = "0" * 64
    with grpc.insecure_channel(addr) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        spec = registry_pb2.ModelSpec(
            api_version="mlops/v1",
            kind="ModelSpec",
            metadata=registry_pb2.ObjectMeta(name=MODEL),
            spec=registry_pb2.ModelSpecBody(dataset=DATASET, task="classification", label="target"),
        )
        applied = stub.ApplyModelSpec(
            registry_pb2.ApplyModelSpecRequest(spec=spec, applied_by="bench"), timeout=30
        )
        registered = stub.RegisterModelVersion(
            registry_pb2.RegisterModelVersionRequest(
                model=MODEL,
                run_id="bench-registry-run-1",
                spec_version=applied.spec_version,
                dataset=DATASET,
                dataset_version=1,
                dataset_sha256="1" * 64,
                artifact_uri=f"s3://mlops/models/{MODEL}/{sha}/model.onnx",
                artifact_sha256=sha,
                artifact_size_bytes=1024,
                signature=registry_pb2.ModelSignature(
                    inputs=[registry_pb2.TensorSpec(name="input", datatype="FP32", shape=[-1, 4])],
                    outputs=[
                        registry_pb2.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
                        registry_pb2.TensorSpec(name="label", datatype="BYTES", shape=[-1]),
                    ],
                    feature_names=["f0", "f1", "f2", "f3"],
                    class_labels=["0", "1"],
                    task="classification",
                    onnx_opset=17,
                ),
                description="registry benchmark",
            ),
            timeout=30,
        )
        version = registered.model_version.version
        stub.SetAlias(
            registry_pb2.SetAliasRequest(
                model=MODEL, alias=ALIAS, version=version, actor="bench", reason="registry benchmark"
            ),
            timeout=30,
        )
        found = stub.GetModelVersion(
            registry_pb2.GetModelVersionRequest(model=MODEL, alias=ALIAS), timeout=30
        )
        if found.version != version:
            raise BenchError(f"{MODEL}@{ALIAS} is version {found.version}, expected {version}")
        return version


def run_ghz(tools: Tools, addr: str, concurrency: int, duration_s: float, connections: int) -> Figures:
    return ghz_load(
        tools.ghz,
        addr,
        proto=REGISTRY_PROTO,
        method=METHOD,
        data={"model": MODEL, "alias": ALIAS},
        concurrency=concurrency,
        duration_s=int(duration_s),  # whole seconds, as wrk takes them
        connections=connections,
    )


# Tracing as the local stack configures it (every call's span exported to Jaeger over OTLP), and with
# 1% of traces sampled, which is how a busy read path is usually run; MLflow's server exports no spans.
SAMPLED_1PCT = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}


def bench_registry(
    tools: Tools, args: argparse.Namespace, log_dir: Path, tracing_env: dict[str, str] | None = None
) -> tuple[Figures, dict]:
    detail = {
        "server": "python -m services.registry (grpc.aio)",
        "request": f"{METHOD} {json.dumps({'model': MODEL, 'alias': ALIAS})}",
        "load_generator": "ghz",
        "ghz_connections": args.ghz_connections,
        "tracing_env": tracing_env or {},
    }
    with contextlib.ExitStack() as stack:
        if args.registry:
            addr, proc, log = args.registry, None, None
            detail["server"] = f"running registry at {addr}"
        else:
            if not (REPO / "services/registry/__main__.py").exists():
                raise BenchError("services/registry/__main__.py does not exist yet; pass --registry ADDR")
            port = free_port()
            addr = f"127.0.0.1:{port}"
            ensure_database(REGISTRY_DB)
            database_url = _PG._replace(path=f"/{REGISTRY_DB}").geturl()
            env = {
                **os.environ,
                "MLOPS_REGISTRY_GRPC_PORT": str(port),
                "MLOPS_REGISTRY_GRPC_HOST": "127.0.0.1",
                "MLOPS_REGISTRY_METRICS_PORT": str(free_port()),
                "MLOPS_DATABASE_URL": database_url,
                "MLOPS_BUS_TOPIC_PREFIX": REGISTRY_TOPIC_PREFIX,
                "MLOPS_REGISTRY_CONSUMER_GROUP": REGISTRY_CONSUMER_GROUP,
                **(tracing_env or {}),
            }
            detail["database"] = f"postgresql://{PG_HOST}:{PG_PORT}/{REGISTRY_DB}"
            proc = stack.enter_context(
                running("registry", [sys.executable, "-m", "services.registry"], env=env, log_dir=log_dir)
            )
            log = log_dir / "registry.log"
        wait_until(
            f"registry at {addr}",
            lambda: registry_serving(addr),
            deadline_s=args.start_timeout,
            proc=proc,
            log=log,
        )
        version = prepare_registry(addr)
        print(f"platform registry at {addr}: {MODEL}@{ALIAS} -> version {version}", flush=True)
        run_ghz(tools, addr, args.concurrency, args.warmup, args.ghz_connections)
        figures = run_ghz(tools, addr, args.concurrency, args.duration, args.ghz_connections)
    return figures, detail


# ---------------------------------------------------------------------------


def bench_registry_sampled(tools: Tools, args: argparse.Namespace, log_dir: Path) -> tuple[Figures, dict]:
    return bench_registry(tools, args, log_dir, SAMPLED_1PCT)


CONTENDERS = {"mlflow": bench_mlflow, "registry": bench_registry, "registry-sampled": bench_registry_sampled}
LABELS = {
    "mlflow": "MLflow tracking server",
    "registry": "platform registry, all traced",
    "registry-sampled": "platform registry, 1% traced",
}
