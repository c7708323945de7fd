"""What the benchmarks share: starting and stopping servers, waiting for them, the tools that
tests/bench/setup.sh installs, and ghz's closed-loop runs.

Each server runs in a session of its own, so that stopping it also stops its workers; ghz's figures
come from its JSON report.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MLOPS_CACHE", Path.home() / ".cache" / "mlops"))
BENCH_VENV = CACHE / "bench-venv"
PROTO_ROOT = REPO / "protos"


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
# ghz
# ---------------------------------------------------------------------------


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
