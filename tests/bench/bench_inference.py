"""Model serving: the platform's inference server against MLServer, same model, same client, same load.

One ONNX model, trained by the trainer's own code on scikit-learn's wine data (13 features,
64→32 hidden units, 3 classes, as the demo's spec), served by:

- the platform's inference server (`python -m services.inference`), with the inference log on
  (every request sampled and published to Kafka) and with it off; the model named by a
  DesiredState record on the benchmark's own topics, dynamic batching on (64 rows, no added wait);
- the same server with the log off, secured as the local stack secures it: TLS with a certificate
  from infra/local/pki.py (made by the benchmark in a temporary directory) and bearer-token
  authorisation (`platform-tls`), and with TLS alone (`platform-tls-noauth`), so that the cost of
  security is read against `platform-nolog` in the same run and split into transport and check;
- MLServer (PyPI `mlserver`, in its own virtualenv) with a minimal onnxruntime runtime
  (`tests/bench/mlserver_onnx/runtime.py`) answering the same outputs;
- two floors, `tests/bench/grpc_floor.py`: grpcio servers that parse the request and return fixed
  answer bytes with no other work, one on `grpc.aio` (the platform server's framework), one on the
  synchronous server with handler threads: what no grpcio server can beat on this machine;
- and, as a ceiling, onnxruntime called in a Python loop in this process (no server, no network);
- over HTTP/REST (KServe V2), the platform's server (`platform-rest`, log off, plaintext: its REST
  port beside gRPC) against MLServer's REST (`mlserver-rest`), driven by wrk with the same row as a
  JSON body and one connection per caller (tests/bench/inference_rest.py).

ghz drives `inference.GRPCInferenceService/ModelInfer` (both servers speak the same KServe V2
gRPC, so the proto and the payload are the same: one row, FP32 typed contents) closed-loop at
each concurrency for the same duration after a warm-up. Each server is started by this script,
measured, and stopped before the next, so no two servers share the cores. Tracing of the
platform's server samples 1% of requests (`parentbased_traceidratio`), its default for a busy path
in production; MLServer exports no traces.

    python -m tests.bench.bench_inference [--concurrency 1 16 64] [--duration 10] [--warmup 3] [--rounds 3]
                                          [--only platform-log platform-nolog platform-tls platform-tls-noauth
                                                  mlserver platform-rest mlserver-rest floor-aio floor-threads
                                                  onnxruntime]

Figures go to bench-results/inference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from tests.bench.harness import REPO, Figures
from tests.bench.inference_contenders import (
    PLATFORM,
    bench_floor,
    bench_mlserver,
    bench_onnxruntime,
    bench_platform,
    payload,
    publish_desired_state,
    store_model,
    train_model,
)
from tests.bench.inference_load import make_pki
from tests.bench.inference_rest import rest_ratios

RESULTS = REPO / "bench-results" / "inference.json"
CONTENDERS = (
    "platform-log",
    "platform-nolog",
    "platform-tls",
    "platform-tls-noauth",
    "mlserver",
    "platform-rest",
    "mlserver-rest",
    "floor-aio",
    "floor-threads",
    "onnxruntime",
)
PLAINTEXT_BASE = "platform-nolog"
"""What the secured contenders are compared with: the same server and settings over plaintext."""
SECURITY_TARGET = 0.15
"""Most of the plaintext throughput that TLS and authorisation may cost at the highest concurrency."""
FLOOR_THREADS = 2
"""Handler threads of the synchronous floor: the best of 1, 2, 4, 8 and 16 on 2 cores."""


# --- summary ------------------------------------------------------------------------------------------


def median_figures(rounds: list[Figures]) -> Figures:
    return Figures(
        requests=int(statistics.median(r.requests for r in rounds)),
        errors=max(r.errors for r in rounds),
        rps=statistics.median(r.rps for r in rounds),
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
    )


def security_ratios(results: dict[str, list[dict[int, Figures]]], medians: dict, cpu: dict) -> dict:
    """Each secured contender against the plaintext one (the same server and settings): medians' ratios,
    each round's ratio against the plaintext run of the same round (the spread), and CPU per request."""
    if PLAINTEXT_BASE not in medians:
        return {}
    base, base_rounds = medians[PLAINTEXT_BASE], results[PLAINTEXT_BASE]
    out: dict = {}
    for name in ("platform-tls", "platform-tls-noauth"):
        if name not in medians:
            continue
        by_round = {
            c: [r[c].rps / b[c].rps for r, b in zip(results[name], base_rounds, strict=False)]
            for c in medians[name]
        }
        out[name] = {
            str(c): {
                "throughput_x_plaintext": round(f.rps / base[c].rps, 3),
                "throughput_cost": round(1 - f.rps / base[c].rps, 3),
                "p99_x_plaintext": round(f.p99_ms / base[c].p99_ms, 3),
                "p50_x_plaintext": round(f.p50_ms / base[c].p50_ms, 3),
                # each round against the plaintext run of the same round: drifting load cancels out
                "throughput_x_plaintext_by_round": [round(x, 3) for x in by_round[c]],
                "throughput_x_plaintext_median_of_rounds": round(statistics.median(by_round[c]), 3),
                "server_cpu_x_plaintext": _cpu_ratio(cpu, name, c, "server_us_per_request"),
                "ghz_cpu_x_plaintext": _cpu_ratio(cpu, name, c, "ghz_us_per_request"),
            }
            for c, f in medians[name].items()
            if c in base
        }
    if "platform-tls" in out:
        top = str(max(medians["platform-tls"]))
        cost = out["platform-tls"][top]["throughput_cost"]
        paired = round(1 - out["platform-tls"][top]["throughput_x_plaintext_median_of_rounds"], 3)
        out["target"] = {
            "concurrency": int(top),
            "max_throughput_cost": SECURITY_TARGET,
            "measured_throughput_cost": cost,
            "measured_throughput_cost_median_of_rounds": paired,
            "server_cpu_x_plaintext": out["platform-tls"][top]["server_cpu_x_plaintext"],
            "met": cost <= SECURITY_TARGET,
        }
    return out


def median_cpu(rounds: list[dict[int, dict[str, float]]]) -> dict[int, dict[str, float]]:
    return {
        c: {key: round(statistics.median(r[c][key] for r in rounds), 1) for key in rounds[0][c]}
        for c in rounds[0]
    }


def _cpu_ratio(cpu: dict, name: str, concurrency: int, key: str) -> float | None:
    try:
        return round(cpu[name][concurrency][key] / cpu[PLAINTEXT_BASE][concurrency][key], 3)
    except (KeyError, ZeroDivisionError):
        return None


def summarise(
    results: dict[str, list[dict[int, Figures]]],
    cpu_rounds: dict[str, list],
    details: dict,
    args,
    model: dict,
) -> dict:
    medians = {
        name: {c: median_figures([r[c] for r in rounds]) for c in rounds[0]}
        for name, rounds in results.items()
    }
    cpu = {name: median_cpu(rounds) for name, rounds in cpu_rounds.items() if rounds[0]}
    ratios: dict = {}
    if "mlserver" in medians:
        for name in ("platform-log", "platform-nolog", "floor-aio", "floor-threads"):
            if name not in medians:
                continue
            ratios[name] = {
                str(c): {
                    "throughput_x_mlserver": round(f.rps / medians["mlserver"][c].rps, 2),
                    "p99_fraction_of_mlserver": round(f.p99_ms / medians["mlserver"][c].p99_ms, 2),
                }
                for c, f in medians[name].items()
                if c in medians["mlserver"]
            }
    if "platform-log" in medians and "platform-nolog" in medians:
        ratios["logging_cost_p99"] = {
            str(c): round(medians["platform-log"][c].p99_ms / medians["platform-nolog"][c].p99_ms - 1, 3)
            for c in medians["platform-log"]
        }
    rest = rest_ratios(medians)
    if rest:
        ratios["rest"] = rest
    security = security_ratios(results, medians, cpu)
    if security:
        ratios["security_vs_plaintext"] = security
    return {
        "benchmark": "inference",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "method": {
            "model": f"wine MLP 13 -> 64 -> 32 -> 3 by the trainer's code ({len(model['onnx'])} bytes ONNX)",
            "request": "ModelInfer, 1 row, FP32 typed contents, same JSON payload for every server",
            "load_generator": "ghz, 1 connection, closed loop; over TLS with --cacert and the token "
            "from a 0600 --metadata-file (one handshake per run, on the connection)",
            "rest": "platform-rest and mlserver-rest: wrk, 1 thread, one keep-alive connection per caller, "
            "closed loop, POST /v2/models/{model}/infer with the same row as JSON data (KServe V2 REST), "
            "answered as JSON",
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
        },
        "contenders": details,
        "results": {name: {str(c): asdict(f) for c, f in per.items()} for name, per in medians.items()},
        "cpu_us_per_request": {name: {str(c): v for c, v in per.items()} for name, per in cpu.items()},
        "ratios": ratios,
    }


def print_table(summary: dict) -> None:
    results = summary["results"]
    print(
        "\n| contender | concurrency | req/s | p50 ms | p99 ms | × MLServer req/s | p99 ÷ MLServer "
        "| × plaintext req/s | p99 ÷ plaintext | server CPU µs/req | ghz/wrk CPU µs/req |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = results.get("mlserver", {})
    plain = results.get(PLAINTEXT_BASE, {})
    for name, per in results.items():
        for c, f in per.items():
            cpu = summary["cpu_us_per_request"].get(name, {}).get(c)
            sc = f"{cpu['server_us_per_request']:.0f}" if cpu else ""
            client = (cpu or {}).get("ghz_us_per_request", (cpu or {}).get("wrk_us_per_request"))
            gc = f"{client:.0f}" if client is not None else ""
            ref = base.get(c)
            x = f"{f['rps'] / ref['rps']:.2f}" if ref else ""
            p = f"{f['p99_ms'] / ref['p99_ms']:.2f}" if ref else ""
            own = plain.get(c) if name in PLATFORM else None
            xp = f"{f['rps'] / own['rps']:.2f}" if own else ""
            pp = f"{f['p99_ms'] / own['p99_ms']:.2f}" if own else ""
            print(
                f"| {name} | {c} | {f['rps']:,.0f} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {x} | {p} "
                f"| {xp} | {pp} | {sc} | {gc} |"
            )
    target = summary["ratios"].get("security_vs_plaintext", {}).get("target")
    if target:
        print(
            f"\nTLS + authorisation at {target['concurrency']} callers: {target['measured_throughput_cost']:.1%} "
            f"of the plaintext throughput (target: at most {target['max_throughput_cost']:.0%}; "
            f"{'met' if target['met'] else 'not met'}); round by round "
            f"{target['measured_throughput_cost_median_of_rounds']:.1%} (median); "
            f"server CPU per request × {target['server_cpu_x_plaintext']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mlserver-workers", type=int, default=0)
    parser.add_argument("--max-batch-size", type=int, default=64, help="the platform's dynamic batching")
    parser.add_argument("--max-wait-us", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--skip-setup", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_setup:
        subprocess.run(["bash", str(REPO / "tests/bench/setup.sh")], check=True)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    with tempfile.TemporaryDirectory() as folder:
        model = train_model(Path(folder))
        data = payload(model)
        uri, sha256 = store_model(model)
        if set(PLATFORM) & set(args.only):
            publish_desired_state(model, uri, sha256, args.max_batch_size, args.max_wait_us)
        pki = make_pki(Path(folder)) if any(PLATFORM[n][1] for n in args.only if n in PLATFORM) else None
        results: dict[str, list] = {}
        cpu_rounds: dict[str, list] = {}
        details: dict = {}
        for round_index in range(args.rounds):
            order = [c for c in CONTENDERS if c in args.only]
            if round_index % 2:
                order.reverse()
            print(f"round {round_index + 1}/{args.rounds}: {', '.join(order)}", flush=True)
            for name in order:
                if name == "onnxruntime":
                    figures, cpu, detail = bench_onnxruntime(model, args)
                elif name in ("mlserver", "mlserver-rest"):
                    rest = name == "mlserver-rest"
                    figures, cpu, detail = bench_mlserver(model, data, args, log_dir, rest=rest)
                elif name.startswith("floor"):
                    threads = FLOOR_THREADS if name == "floor-threads" else 0
                    figures, cpu, detail = bench_floor(model, data, args, log_dir, threads=threads)
                else:
                    figures, cpu, detail = bench_platform(name, model, data, args, log_dir, pki=pki)
                results.setdefault(name, []).append(figures)
                cpu_rounds.setdefault(name, []).append(cpu)
                details[name] = detail
        summary = summarise(results, cpu_rounds, details, args, model)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary)
    print(f"\nratios: {json.dumps(summary['ratios'])}\nresults in {RESULTS}; server logs in {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
