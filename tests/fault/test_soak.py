"""R10: a soak at 80% of the measured maximum throughput, inference logging on.

ghz first finds the running inference server's maximum (closed loop) for a fresh model, then holds
80% of it (open loop, `--rps`) in slices, reading the server's RSS from /proc after each slice. After
the warm-up slices, RSS may not grow by 5% or more, p99 may not climb (the last third's median p99 at
most 1.5x the first third's), and no request may fail. `make soak` runs it for 30 minutes
(MLOPS_SOAK_SECONDS=1800); `make test` runs a short version.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fault.conftest import ROOT, STACK, figures, service_pid
from tests.fault.loop import Loop

GHZ = Path(os.environ.get("MLOPS_CACHE", Path.home() / ".cache/mlops")) / "bin" / "ghz"
SOAK_S = float(os.environ.get("MLOPS_SOAK_SECONDS", "120"))
SLICE_S = float(os.environ.get("MLOPS_SOAK_SLICE_SECONDS", "15"))
WARMUP_SLICES = 2
CONCURRENCY = 32


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def viewer_metadata(folder: Path) -> Path:
    """ghz's metadata file with a viewer's bearer token (0600; never on a command line)."""
    token = (STACK / "clients" / "viewer.token").read_text().strip()
    path = folder / "ghz-metadata.json"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as f:
        json.dump({"authorization": f"Bearer {token}"}, f)
    return path


def ghz(model: str, duration_s: float, metadata: Path, rps: int | None = None) -> dict:
    row = np.random.default_rng(1).normal(size=13).astype(np.float32).tolist()
    data = {
        "model_name": model,
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 13], "contents": {"fp32_contents": row}}
        ],
    }
    command = [
        str(GHZ),
        # as any client of the stack: TLS verified against its CA, a token in the metadata
        "--cacert",
        str(STACK / "clients" / "ca.pem"),
        "--metadata-file",
        str(metadata),
        "--import-paths",
        str(ROOT / "protos"),
        "--proto",
        str(ROOT / "protos/inference/grpc_service.proto"),
        "--call",
        "inference.GRPCInferenceService/ModelInfer",
        "--data",
        json.dumps(data),
        "--concurrency",
        str(CONCURRENCY),
        "--duration",
        f"{duration_s:g}s",
        "--duration-stop",
        "ignore",
        "--timeout",
        "5s",
        "--format",
        "json",
    ]
    if rps:
        command += ["--rps", str(rps)]
    out = subprocess.run(
        [*command, "127.0.0.1:8001"], capture_output=True, text=True, timeout=duration_s + 120
    )
    assert out.returncode == 0, f"ghz failed: {out.stderr[-2000:]}"
    report = json.loads(out.stdout)
    p99 = next((d["latency"] for d in report.get("latencyDistribution") or [] if d["percentage"] == 99), 0)
    codes = report.get("statusCodeDistribution") or {}
    errors = sum(count for code, count in codes.items() if code != "OK")
    return {"rps": report["rps"], "p99_ms": p99 / 1e6, "errors": errors, "count": report["count"]}


@pytest.mark.timeout(SOAK_S + 900)
def test_r10_soak_at_80_percent_of_the_maximum_keeps_memory_and_latency_flat(unique, tmp_path):
    assert GHZ.exists(), f"ghz is not installed at {GHZ}: run `make setup`"
    loop = Loop(f"soak-{unique}", tmp_path, epochs=30)
    try:
        loop.declare()
        loop.commit()
        loop.wait_in_production(1, timeout_s=300)
    finally:
        loop.close()
    metadata = viewer_metadata(tmp_path)
    ghz(loop.name, 3, metadata)  # the first calls load caches and JIT paths; not measured
    maximum = ghz(loop.name, 8, metadata)
    assert maximum["errors"] == 0, (
        f"{maximum['errors']} of {maximum['count']} calls failed finding the maximum"
    )
    target = max(1, int(maximum["rps"] * 0.8))

    pid = service_pid("inference")
    monitor_pid = service_pid("monitor")
    slices = []
    started = time.monotonic()
    while time.monotonic() - started < SOAK_S:
        result = ghz(loop.name, SLICE_S, metadata, rps=target)
        result["rss_kib"] = rss_kib(pid)
        result["monitor_rss_kib"] = rss_kib(monitor_pid)
        slices.append(result)
    assert service_pid("inference") == pid, "the inference server restarted during the soak"

    measured = slices[WARMUP_SLICES:]
    assert len(measured) >= 3, f"a soak of {SOAK_S:g} s gives too few slices of {SLICE_S:g} s"
    base = slices[WARMUP_SLICES - 1]["rss_kib"]
    growth = (max(s["rss_kib"] for s in measured) - base) / base
    monitor_base = slices[WARMUP_SLICES - 1]["monitor_rss_kib"]
    monitor_growth = (max(s["monitor_rss_kib"] for s in measured) - monitor_base) / monitor_base
    third = max(1, len(measured) // 3)
    p99_first = statistics.median(s["p99_ms"] for s in measured[:third])
    p99_last = statistics.median(s["p99_ms"] for s in measured[-third:])
    errors = sum(s["errors"] for s in slices)
    figures(
        "R10 soak",
        seconds=round(time.monotonic() - started),
        max_rps=round(maximum["rps"]),
        target_rps=target,
        achieved_rps=round(statistics.median(s["rps"] for s in measured)),
        requests=sum(s["count"] for s in slices),
        errors=errors,
        rss_growth_pct=round(100 * growth, 2),
        rss_mib=round(slices[-1]["rss_kib"] / 1024, 1),
        monitor_rss_growth_pct=round(100 * monitor_growth, 2),
        p99_first_ms=round(p99_first, 2),
        p99_last_ms=round(p99_last, 2),
    )
    assert errors == 0, f"{errors} failed requests at 80% of the maximum"
    assert growth < 0.05, f"inference RSS grew {100 * growth:.1f}% after warm-up"
    assert p99_last <= 1.5 * p99_first, f"p99 climbed from {p99_first:.2f} ms to {p99_last:.2f} ms"
