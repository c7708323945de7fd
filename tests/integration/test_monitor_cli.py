"""`mlops drift status` and `mlops monitor health`, run as processes against an in-process monitor."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

from tests.integration import monitor_helpers as harness
from tests.integration.conftest import eventually
from tests.integration.monitor_helpers import batch_of, declare_model, drift_status, shifted_frame
from tests.integration.test_cli import ROOT, _environment

# The monitor running in-process, and what it needs, as monitor_helpers builds them.
monitor, publisher, registry, store = harness.monitor, harness.publisher, harness.registry, harness.store


async def mlops(address: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlops.cli",
        *args,
        "--monitor",
        address,
        cwd=ROOT,
        env=_environment(COLUMNS="250"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, out.decode(), err.decode()


async def test_drift_status_and_monitor_health_show_what_the_monitor_saw(monitor, registry, store, publisher):
    model = await declare_model(registry, store, uuid.uuid4().hex[:10], consecutive=2)
    deadline = time.time() + 4
    while time.time() < deadline:
        await publisher.publish(batch_of(model, shifted_frame(model.rng, 80), sampling_rate=0.5))
        await asyncio.sleep(0.1)

    async def alarmed():
        status = await drift_status(monitor, model.name)
        return status.versions and status.versions[0].HasField("last_alarm_at")

    await eventually(alarmed, timeout_s=20, what="a drift alarm")
    address = monitor.address

    code, out, err = await mlops(address, "drift", "status", model.name, "--windows", "3")
    assert code == 0, err
    assert f"{model.name} v1" in out and "psi (threshold 0.2)" in out
    assert "drifted windows in a row" in out and "last drift alarm" in out
    assert "drifted" in out and "beta" in out and "gamma" in out and "*" in out
    # the harness's models are trained elsewhere (training.external): the alarm asked for a new model
    assert "new model needed" in out and "trained outside the platform" in out

    code, out, err = await mlops(address, "--json", "drift", "status", model.name)
    assert code == 0, err
    document = json.loads(out)
    (version,) = document["versions"]
    assert version["version"] == "1" and version["consecutiveWindows"] >= 2
    assert {f["feature"] for f in version["windows"][0]["features"]} == {"alpha", "beta", "gamma", "delta"}

    code, out, err = await mlops(address, "monitor", "health", model.name, "--window", "60")
    assert code == 0, err
    assert "v1" in out and "requests" in out and "p99 ms" in out

    code, out, err = await mlops(address, "--json", "monitor", "health", model.name, "--window", "60")
    assert code == 0, err
    (health,) = json.loads(out)["versions"]
    assert int(health["requestCount"]) >= 2 * 80 * 30  # sampled rows scaled by 1 / 0.5

    code, _, err = await mlops(address, "drift", "status", f"nobody-{uuid.uuid4().hex[:6]}")
    assert code == 3 and "unknown to the monitor" in err
    code, _, err = await mlops("127.0.0.1:1", "--timeout", "2", "monitor", "health", model.name)
    assert code == 5 and "the monitor at 127.0.0.1:1" in err
