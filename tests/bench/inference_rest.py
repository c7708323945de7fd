"""The inference benchmark over HTTP/REST: wrk drives `POST /v2/models/{model}/infer` (KServe V2 REST)
with one JSON body, the same row as ghz's gRPC payload, at each concurrency (one connection per
concurrent caller: HTTP/1.1 carries one request at a time), closed loop, after a warm-up. The
platform's server and MLServer both speak it, so the body and the load are the same for both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tests.bench.harness import BenchError, Figures
from tests.bench.inference_load import MODEL, children_cpu_s, process_cpu_s

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%%d,"errors":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
"""


def rest_body(data: dict) -> bytes:
    """ghz's gRPC payload (FP32 typed contents) as the KServe V2 REST body: the same row, as JSON data."""
    tensor = data["inputs"][0]
    return json.dumps(
        {
            "inputs": [
                {
                    "name": tensor["name"],
                    "datatype": tensor["datatype"],
                    "shape": tensor["shape"],
                    "data": tensor["contents"]["fp32_contents"],
                }
            ]
        },
        separators=(",", ":"),
    ).encode()


def infer_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"


def rest_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready", timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def check_rest_answer(url: str, body: bytes) -> None:
    """Every server must answer the body with both outputs before it is measured."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        answer = json.loads(reply.read())
    names = [o["name"] for o in answer.get("outputs", [])]
    if "probabilities" not in names or "label" not in names:
        raise BenchError(f"{url} answered outputs {names}")


def _wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise BenchError("wrk is missing: run `bash tests/bench/setup.sh`")
    return found


def run_wrk(url: str, body: bytes, connections: int, duration_s: float) -> Figures:
    if b"]]" in body:
        raise BenchError("the body cannot be put in a Lua long string")
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "post.lua"
        script.write_text(WRK_SCRIPT % body.decode())
        argv = [_wrk(), "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s"]
        run = subprocess.run([*argv, "-s", str(script), url], capture_output=True, text=True, check=False)
    line = next((x for x in run.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if run.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({run.returncode}): {run.stderr.strip() or run.stdout.strip()}")
    out = json.loads(line.removeprefix("WRKJSON "))
    seconds = out["duration_us"] / 1e6
    return Figures(
        requests=out["requests"],
        errors=out["errors"],
        rps=out["requests"] / seconds if seconds else 0.0,
        p50_ms=out["p50_us"] / 1000,
        p99_ms=out["p99_us"] / 1000,
    )


def measure_rest(
    name: str, url: str, body: bytes, args: argparse.Namespace, *, pid: int
) -> tuple[dict[int, Figures], dict[int, dict[str, float]]]:
    """wrk's figures at each concurrency, and the CPU per request of the server (`pid`) and of wrk."""
    run_wrk(url, body, max(args.concurrency), args.warmup)  # warm-up, thrown away
    figures, cpu = {}, {}
    for concurrency in args.concurrency:
        load = os.getloadavg()[0]
        server_before, wrk_before = process_cpu_s(pid), children_cpu_s()
        result = run_wrk(url, body, concurrency, args.duration)
        server_s, wrk_s = process_cpu_s(pid) - server_before, children_cpu_s() - wrk_before
        figures[concurrency] = result
        requests = max(result.requests, 1)
        cpu[concurrency] = {
            "server_us_per_request": round(server_s / requests * 1e6, 1),
            "wrk_us_per_request": round(wrk_s / requests * 1e6, 1),
        }
        print(
            f"  {name:19s} c={concurrency:<3d} {result.rps:9.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
            f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}  "
            f"server {cpu[concurrency]['server_us_per_request']:5.0f} µs/req  "
            f"wrk {cpu[concurrency]['wrk_us_per_request']:5.0f} µs/req  (load {load:.2f})",
            flush=True,
        )
    return figures, cpu


def rest_ratios(medians: dict) -> dict:
    """The platform's REST against MLServer's REST, per concurrency; and REST against gRPC on each."""
    out: dict = {}
    if "platform-rest" in medians and "mlserver-rest" in medians:
        theirs = medians["mlserver-rest"]
        out["platform-rest_vs_mlserver-rest"] = {
            str(c): {
                "throughput_x_mlserver_rest": round(f.rps / theirs[c].rps, 2),
                "p99_fraction_of_mlserver_rest": round(f.p99_ms / theirs[c].p99_ms, 2),
            }
            for c, f in medians["platform-rest"].items()
            if c in theirs
        }
    for rest, grpc in (("platform-rest", "platform-nolog"), ("mlserver-rest", "mlserver")):
        if rest in medians and grpc in medians:
            out[f"{rest}_x_{grpc}_throughput"] = {
                str(c): round(f.rps / medians[grpc][c].rps, 2)
                for c, f in medians[rest].items()
                if c in medians[grpc]
            }
    return out
