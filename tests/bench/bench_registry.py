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
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
from dataclasses import asdict
from pathlib import Path

import grpc

from tests.bench.harness import REPO, BenchError, Figures, Tools, ensure_tools, wait_until
from tests.bench.registry_contenders import (
    CONTENDERS,
    LABELS,
    PG_APP_DB,
    PG_HOST,
    PG_PASSWORD,
    PG_PORT,
    PG_USER,
)


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
