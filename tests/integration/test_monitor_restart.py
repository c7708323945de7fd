"""`python -m services.monitor` killed with SIGKILL mid-window and started again after its window has
ended: the window closes with every logged row counted exactly once, whatever had been committed
when the process died, and the rows logged while it was down counted in it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from mlops.grpc import open_channel
from mlops.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from services.monitor.tables import SCHEMA
from tests.integration import monitor_helpers as harness
from tests.integration.conftest import TEST_TOPIC_PREFIX, eventually
from tests.integration.monitor_helpers import batch_of, declare_model, training_frame
from tests.integration.test_cli import ROOT, _free_port

publisher, registry, store = harness.publisher, harness.registry, harness.store

WINDOW_S = 10


def start_monitor(group: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ)
    env.pop("OTEL_SERVICE_NAME", None)
    env.update(
        MLOPS_BUS_TOPIC_PREFIX=TEST_TOPIC_PREFIX,
        MLOPS_MONITOR_CONSUMER_GROUP=group,
        MLOPS_MONITOR_GRPC_PORT=str(port),
        MLOPS_MONITOR_METRICS_PORT=str(_free_port()),
        MLOPS_MONITOR_START_FROM="latest",
        MLOPS_MONITOR_FLUSH_INTERVAL_MS="300",
        MLOPS_MONITOR_WINDOW_GRACE_MS="300",
    )
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.monitor"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, f"127.0.0.1:{port}"


def _tail(log: Path) -> str:
    return log.read_text()[-4000:]


async def wait_serving(process: subprocess.Popen, address: str, log: Path) -> None:
    async with open_channel(address, traced=False) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def serving():
            if process.poll() is not None:
                pytest.fail(f"the monitor exited with {process.returncode}:\n{_tail(log)}")
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service="mlops.monitor.v1.Monitor"), timeout=1
            )
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        await eventually(serving, timeout_s=90, interval_s=0.2, what="the monitor SERVING")


async def committed(database, group: str, model: str | None = None):
    async with database.session() as session:
        if model is None:
            query = f"SELECT count(*) FROM {SCHEMA}.offsets WHERE consumer_group = :g"
            return (await session.exec(text(query), params={"g": group})).one()[0]
        query = f"SELECT sample_count, closed, body FROM {SCHEMA}.windows WHERE consumer_group = :g AND model = :m"
        return (await session.exec(text(query), params={"g": group, "m": model})).all()


@pytest.mark.timeout(240)
async def test_sigkill_mid_window_then_restart_counts_every_row_once(
    database, registry, store, publisher, tmp_path
):
    model = await declare_model(
        registry, store, uuid.uuid4().hex[:10], window_seconds=WINDOW_S, min_samples=10
    )
    group = f"tests-monitor-kill-{uuid.uuid4().hex[:8]}"
    inference_group = f"{group}.inference"
    log = tmp_path / "monitor.log"
    now = time.time()
    start = int(now // WINDOW_S) * WINDOW_S
    if start + WINDOW_S - now < 8:
        start += WINDOW_S  # too little of this window is left for a restart inside it
    at = max(now, start + 0.5)
    published = 0

    async def publish(n: int) -> None:
        nonlocal published
        await publisher.publish(batch_of(model, training_frame(model.rng, n), at=at))
        published += n

    first, address = start_monitor(group, log)
    try:
        await wait_serving(first, address, log)
        await eventually(
            lambda: committed(database, inference_group), timeout_s=60, what="partitions assigned"
        )
        await publish(120)

        async def first_batch_committed():
            rows = await committed(database, inference_group, model.name)
            return rows and rows[0][0] == 120

        await eventually(first_batch_committed, timeout_s=30, what="the first batch committed")
        await publish(80)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    # Logged while no monitor runs: the restarted one reads this backlog into the window before it
    # judges the window, even though the window's end has passed by then.
    await publish(50)

    second, address = start_monitor(group, log)
    try:
        await wait_serving(second, address, log)

        async def closed():
            rows = await committed(database, inference_group, model.name)
            return rows[0] if rows and rows[0][1] else None

        samples, _, body = await eventually(closed, timeout_s=60, what="the window closed after the restart")
        assert samples == published == 250
        window = monitor_pb2.DriftWindow.FromString(body)
        assert window.sample_count == 250 and window.judged
        assert window.window.start.seconds == start
        async with open_channel(address, traced=False) as channel:
            status = await monitor_pb2_grpc.MonitorStub(channel).GetDriftStatus(
                monitor_pb2.GetDriftStatusRequest(model=model.name)
            )
        assert [w.sample_count for v in status.versions for w in v.windows] == [250]
    finally:
        second.terminate()
        try:
            second.wait(timeout=30)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait()
