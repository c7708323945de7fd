"""Model version lookup by alias: the platform's registry against MLflow's tracking server, in one run.

Both answer "which version of `bench-model` is `production`?" from PostgreSQL on this machine:

- the platform: gRPC `mlops.registry.v1.Registry/GetModelVersion` with
  `{"model": "bench-model", "alias": "production"}`, driven by ghz;
- MLflow (its PyPI package, in its own virtualenv, PostgreSQL backend store):
  `GET /api/2.0/mlflow/registered-models/alias?name=bench-model&alias=production`, which is what
  `MlflowClient.get_model_version_by_alias` sends, driven by wrk.

Both load generators are native programs, because on a small machine a Python client would starve
the server it measures. Both run closed-loop with the same number of concurrent callers for the
same duration, each after a warm-up whose figures are thrown away. Each server is started by this
script (unless `--registry ADDR` names a running registry), given the same state through its own
API, measured, and stopped before the next one starts, so that no two contenders share the CPU.
The platform runs twice: with tracing as the local stack sets it (every call's span exported to
Jaeger) and with 1% of traces sampled. Rounds alternate the order; medians are compared.

    python -m tests.bench.bench_registry [--concurrency 32] [--duration 20] [--warmup 5] [--rounds 3]
                                         [--registry HOST:PORT] [--mlflow-workers N] [--only NAME ...]

Tools (ghz, wrk, MLflow) come from tests/bench/setup.sh, which this script runs first (idempotent,
cached under ${MLOPS_CACHE:-~/.cache/mlops}). PostgreSQL is the local stack's (`make up`); each
contender gets a database of its own (`mlflow_bench`, `registry_bench`), and the registry started
here uses its own Kafka topic prefix and consumer group, so that it leaves the platform's alone.
Figures go to bench-results/registry.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlops.registry.v1 import registry_pb2, registry_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MLOPS_CACHE", Path.home() / ".cache" / "mlops"))
BENCH_VENV = CACHE / "bench-venv"
PROTO_ROOT = REPO / "protos"
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


class BenchError(RuntimeError):
    """Something the benchmark needs is missing or misbehaved; the message says what."""


@dataclass
class Figures:
    """What one contender achieved under load."""

    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


# ---------------------------------------------------------------------------
# Processes: each in its own session, so that stopping it also stops its workers.
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(name: str, argv: list[str], *, env: dict[str, str], log_dir: Path) -> Iterator[subprocess.Popen]:
    """Runs a server for the duration of the block, then stops it and every process it forked."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    print(f"started {name} (pid {proc.pid}), log {log_path}", flush=True)
    try:
        yield proc
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the process group this script created for the server, SIGKILL after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; workers of the same group may linger a moment
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def wait_until(
    what: str,
    ready: Callable[[], bool],
    *,
    deadline_s: float,
    proc: subprocess.Popen | None,
    log: Path | None = None,
) -> None:
    """Polls `ready` until it returns True; fails at the deadline or when the server exits."""
    deadline = time.monotonic() + deadline_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise BenchError(f"{what} exited with status {proc.returncode} before it was ready\n{tail}")
        try:
            if ready():
                return
        except Exception as error:
            last_error = error
        time.sleep(0.5)
    raise BenchError(f"{what} not ready after {deadline_s:.0f} s (last error: {last_error})")


# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------


@dataclass
class Tools:
    ghz: str
    wrk: str
    mlflow: str
    mlflow_version: str


def ensure_tools() -> Tools:
    subprocess.run(["bash", str(REPO / "tests/bench/setup.sh")], check=True)
    ghz = CACHE / "bin" / "ghz"
    wrk = shutil.which("wrk")
    mlflow = BENCH_VENV / "bin" / "mlflow"
    if not ghz.exists() or wrk is None or not mlflow.exists():
        raise BenchError("tests/bench/setup.sh did not leave ghz, wrk and MLflow in place")
    version = subprocess.run(
        [str(BENCH_VENV / "bin/python"), "-c", "import mlflow; print(mlflow.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Tools(ghz=str(ghz), wrk=wrk, mlflow=str(mlflow), mlflow_version=version)


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


def ghz_load(
    ghz: str,
    addr: str,
    *,
    proto: str,
    method: str,
    data: dict,
    concurrency: int,
    duration_s: float,
    connections: int = 1,
) -> Figures:
    """One closed-loop ghz run of `method` (a proto under protos/) with `data` as its JSON payload."""
    out = subprocess.run(
        [
            ghz,
            "--insecure",
            "--import-paths",
            str(PROTO_ROOT),
            "--proto",
            str(PROTO_ROOT / proto),
            "--call",
            method,
            "--data",
            json.dumps(data),
            "--concurrency",
            str(concurrency),
            "--connections",
            str(connections),
            # calls in flight when the time is up are left out of the tally, as wrk does, rather than counted as errors
            "--duration",
            f"{duration_s:g}s",
            "--duration-stop",
            "ignore",
            "--timeout",
            "10s",
            "--format",
            "json",
            addr,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return ghz_figures(out)


def ghz_figures(out: str) -> Figures:
    """The figures of one ghz run from its JSON report; status codes other than OK count as errors."""
    report = json.loads(out)
    latencies = {int(row["percentage"]): row["latency"] for row in report.get("latencyDistribution") or []}
    if 50 not in latencies or 99 not in latencies:
        raise BenchError(f"ghz reported no latency distribution: {out[:2000]}")
    codes = report.get("statusCodeDistribution") or {}
    ok = codes.get("OK", 0)
    if ok != int(report["count"]):
        print(f"ghz status codes: {codes}; errors: {report.get('errorDistribution')}", file=sys.stderr)
    return Figures(
        requests=int(report["count"]),
        errors=int(report["count"]) - ok,
        rps=float(report["rps"]),
        p50_ms=latencies[50] / 1e6,
        p99_ms=latencies[99] / 1e6,
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


def median_figures(rounds: list[Figures]) -> Figures:
    """Each figure's median over the rounds; counts are totals."""
    return Figures(
        requests=sum(f.requests for f in rounds),
        errors=sum(f.errors for f in rounds),
        rps=statistics.median(f.rps for f in rounds),
        p50_ms=statistics.median(f.p50_ms for f in rounds),
        p99_ms=statistics.median(f.p99_ms for f in rounds),
    )


def summarise(
    args: argparse.Namespace, results: dict[str, list[tuple[Figures, dict]]], loads: list[float]
) -> dict:
    medians = {name: median_figures([fig for fig, _ in runs]) for name, runs in results.items()}
    summary: dict = {
        "benchmark": "model version lookup by alias (bench-model@production), closed loop, medians over rounds",
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "cores": os.cpu_count(),
        "load_average_1m_before_each_measurement": loads,
        "contenders": {
            name: {
                **{k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(medians[name]).items()},
                **runs[-1][1],
                "rounds": [asdict(fig) for fig, _ in runs],
            }
            for name, runs in results.items()
        },
    }
    if "mlflow" in medians:
        mlflow = medians["mlflow"]
        for name in ("registry", "registry-sampled"):
            if name in medians:
                summary.setdefault("throughput_ratio_platform_over_mlflow", {})[name] = round(
                    medians[name].rps / mlflow.rps, 2
                )
                summary.setdefault("p99_ratio_platform_over_mlflow", {})[name] = round(
                    medians[name].p99_ms / mlflow.p99_ms, 3
                )
        summary["target_throughput_ratio"] = 10
    return summary


def print_table(summary: dict) -> None:
    print(
        f"\nGetModelVersion by alias: {summary['concurrency']} concurrent callers, {summary['duration_s']:.0f} s "
        f"after a {summary['warmup_s']:.0f} s warm-up, median of {summary['rounds']} rounds, "
        f"{summary['cores']} cores"
    )
    print(
        f"{'contender':30s} {'req/s':>8s} {'p50 ms':>9s} {'p99 ms':>9s} {'x MLflow':>9s} {'requests':>10s} "
        f"{'errors':>7s}"
    )
    ratios = summary.get("throughput_ratio_platform_over_mlflow", {})
    for name, row in summary["contenders"].items():
        ratio = f"{ratios[name]:.1f}x" if name in ratios else ("1.0x" if name == "mlflow" and ratios else "")
        print(
            f"{LABELS[name]:30s} {row['rps']:>8,.0f} {row['p50_ms']:>9.2f} {row['p99_ms']:>9.2f} {ratio:>9s} "
            f"{row['requests']:>10,} {row['errors']:>7,}"
        )
    if ratios:
        print(f"target: {summary['target_throughput_ratio']}x MLflow's throughput")


def stack_answers() -> bool:
    """PostgreSQL answers a query as the application role and Kafka accepts connections."""
    env = {**os.environ, "PGPASSWORD": PG_PASSWORD, "PGCONNECT_TIMEOUT": "3"}
    query = [
        "psql",
        "-X",
        "-tA",
        "-h",
        PG_HOST,
        "-p",
        str(PG_PORT),
        "-U",
        PG_USER,
        "-d",
        PG_APP_DB,
        "-c",
        "SELECT 1",
    ]
    if subprocess.run(query, env=env, capture_output=True, text=True).stdout.strip() != "1":
        return False
    host, _, port = os.environ.get("MLOPS_KAFKA_BOOTSTRAP", "127.0.0.1:9092").split(",")[0].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=3):
        return True


def measure_with_retry(
    name: str, tools: Tools, args: argparse.Namespace, log_dir: Path
) -> tuple[Figures, dict]:
    """One contender, tried again after a failure: the shared local stack may be restarted under us."""
    attempts = 3
    for attempt in range(1, attempts + 1):
        try:
            return CONTENDERS[name](tools, args, log_dir)
        except (
            BenchError,
            subprocess.CalledProcessError,
            grpc.RpcError,
            urllib.error.URLError,
            OSError,
        ) as error:
            if attempt == attempts:
                raise BenchError(f"{LABELS[name]}: {error}") from error
            print(
                f"{LABELS[name]} failed ({error}); waiting for the local stack, then trying again",
                file=sys.stderr,
            )
            time.sleep(5)  # a restarting stack may answer for a moment before it goes down
            wait_until("the local stack (PostgreSQL, Kafka)", stack_answers, deadline_s=180, proc=None)
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="concurrent callers, for both (default 32)"
    )
    parser.add_argument("--duration", type=float, default=20, help="measured seconds, for both (default 20)")
    parser.add_argument("--warmup", type=float, default=5, help="unmeasured seconds before each (default 5)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds, contenders in alternating order, medians compared (default 3)",
    )
    parser.add_argument(
        "--registry",
        metavar="HOST:PORT",
        help="use a running registry instead of starting one (its tracing is what it is)",
    )
    parser.add_argument(
        "--mlflow-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="MLflow's worker processes (default: one per core)",
    )
    parser.add_argument(
        "--mlflow-server",
        choices=["uvicorn", "gunicorn"],
        default="uvicorn",
        help="MLflow's HTTP server: uvicorn (its default since 3.x) or gunicorn (sync workers)",
    )
    parser.add_argument(
        "--ghz-connections",
        type=int,
        default=1,
        help="HTTP/2 connections ghz spreads its callers over (default 1: one channel, as a gRPC client has)",
    )
    parser.add_argument(
        "--start-timeout", type=float, default=180, help="seconds a server may take to be ready"
    )
    parser.add_argument(
        "--only", choices=list(CONTENDERS), action="append", help="measure only this contender (repeatable)"
    )
    parser.add_argument("--output", type=Path, default=REPO / "bench-results" / "registry.json")
    args = parser.parse_args(argv)
    names = args.only or [name for name in CONTENDERS if not (args.registry and name == "registry-sampled")]

    # SIGTERM unwinds like Ctrl-C, so that the servers this script started are stopped either way
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tools = ensure_tools()
    log_dir = Path(tempfile.mkdtemp(prefix="mlops-bench-registry-"))
    results: dict[str, list[tuple[Figures, dict]]] = {name: [] for name in names}
    loads: list[float] = []
    try:
        for round_ in range(args.rounds):
            order = names if round_ % 2 == 0 else names[::-1]  # no contender always runs first
            for name in order:
                print(f"--- round {round_ + 1}/{args.rounds}: {LABELS[name]}", flush=True)
                loads.append(round(os.getloadavg()[0], 2))
                results[name].append(measure_with_retry(name, tools, args, log_dir))
                fig = results[name][-1][0]
                print(
                    f"{LABELS[name]}: {fig.rps:,.0f} req/s, p50 {fig.p50_ms:.2f} ms, p99 {fig.p99_ms:.2f} ms, "
                    f"{fig.errors} errors",
                    flush=True,
                )
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        print(f"server logs in {log_dir}", file=sys.stderr)
        return 1
    summary = summarise(args, results, loads)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary)
    print(f"written to {args.output}; server logs in {log_dir}")
    failed = [name for name, runs in results.items() if any(fig.errors for fig, _ in runs)]
    if failed:
        print(f"error: failed requests from {', '.join(failed)}: figures are not comparable", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
