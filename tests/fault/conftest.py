"""Fault injection on the running stack (`make up`): real processes killed and restarted, real topics.

The helpers here act on the stack the project's own scripts started: they read pids from
`.stack/run/`, SIGKILL real processes, bring components back with `infra/local/stack.sh up`, and
read Kafka, the services' gRPC APIs and their schemas to count what happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from mlops.bus import acl
from mlops.event_catalog import spec_for
from mlops.grpc import open_sync_channel
from mlops.settings import KafkaSettings
from tests.fault import service_logs
from tests.integration.conftest import eventually, stack, unique  # noqa: F401 - shared fixtures

ROOT = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("MLOPS_STACK_DIR", ROOT / ".stack"))
SERVICE_PORTS = {
    "registry": 50051,
    "trainer": 50054,
    "evaluator": 50055,
    "deployer": 50052,
    "monitor": 50053,
    "inference": 8001,
}
CONSUMER_GROUPS = {
    "registry": ["mlops-registry"],
    "trainer": ["mlops-trainer"],
    "evaluator": ["mlops-evaluator"],
    "deployer": ["mlops-deployer"],
    "monitor": ["mlops-monitor", "mlops-monitor.inference"],
}


def figures(title: str, **values) -> None:
    """Print a scenario's figures in one greppable line (`pytest -s` or the report's captured output)."""
    print(f"\nFAULT {title}: " + ", ".join(f"{name}={value}" for name, value in values.items()), flush=True)


def run(*command: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)


def wait_until(check, *, timeout_s: float, what: str, interval_s: float = 0.2):
    """Poll a synchronous `check()` until it is truthy; fail naming `what` when the deadline passes."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as error:  # a component coming back may refuse for a while
            last = error
        time.sleep(interval_s)
    raise AssertionError(f"{what} not within {timeout_s}s" + (f" (last error: {last})" if last else ""))


# --- the services, under their supervisors ------------------------------------------------------


def service_state(name: str) -> dict:
    return json.loads((STACK / "run" / f"{name}.state").read_text())


def service_pid(name: str) -> int | None:
    return service_state(name).get("pid")


def serving(port: int) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with open_sync_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def kill_service(name: str, sig: int = signal.SIGKILL) -> int:
    """SIGKILL the service's own process (not its supervisor); returns the killed pid."""
    pid = service_pid(name)
    assert pid, f"{name} is not running (no pid in its supervisor's state)"
    os.kill(pid, sig)
    return pid


def wait_restarted(name: str, old_pid: int, *, timeout_s: float = 120) -> int:
    """The supervisor brought the service back: a new pid that answers health SERVING."""
    new = wait_until(
        lambda: (pid := service_pid(name)) and pid != old_pid and pid,
        timeout_s=timeout_s,
        what=f"{name} restarted by its supervisor",
    )
    wait_until(lambda: serving(SERVICE_PORTS[name]), timeout_s=timeout_s, what=f"{name} serving again")
    return new


def all_services_running() -> dict[str, int]:
    """Every service serving; returns each one's restart count."""
    restarts = {}
    for name, port in SERVICE_PORTS.items():
        assert serving(port), f"{name} is not serving on {port}"
        restarts[name] = service_state(name)["restarts"]
    return restarts


# --- the stack's components ---------------------------------------------------------------------


def component_pid(name: str) -> int:
    return int((STACK / "run" / f"{name}.pid").read_text().strip())


def kill_component(name: str) -> None:
    """SIGKILL Kafka, PostgreSQL, the S3 server or Jaeger, and wait until the process is gone."""
    pid = component_pid(name)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not _running(pid), timeout_s=30, what=f"{name} (pid {pid}) gone")


def start_component(name: str) -> None:
    up = run("bash", "infra/local/stack.sh", "up", name)
    assert up.returncode == 0, up.stdout + up.stderr


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# --- Kafka --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_settings() -> KafkaSettings:
    return KafkaSettings()


async def end_offsets(kafka: KafkaSettings, topics: Iterable[str]) -> dict[TopicPartition, int]:
    reader = AIOKafkaConsumer(**kafka.client_options(), group_id=None, enable_auto_commit=False)
    await reader.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(reader.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            await reader._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p)
                for topic in topics
                for p in sorted(reader.partitions_for_topic(topic) or ())
            ]
        return await reader.end_offsets(partitions) if partitions else {}
    finally:
        await reader.stop()


async def read_since(kafka: KafkaSettings, start: dict[TopicPartition, int], *, timeout_s: float = 5.0):
    """Every record after `start` (per partition) up to the ends as of now."""
    if not start:
        return []
    reader = AIOKafkaConsumer(**kafka.client_options(), group_id=None, enable_auto_commit=False)
    await reader.start()
    try:
        partitions = list(start)
        reader.assign(partitions)
        ends = await reader.end_offsets(partitions)
        for tp, offset in start.items():
            reader.seek(tp, offset)
        records = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pending = {tp for tp in partitions if ends[tp] > start[tp]}
        while pending and loop.time() < deadline:
            batch = await reader.getmany(timeout_ms=200)
            for tp, items in batch.items():
                records.extend(items)
                if items and items[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
        return records
    finally:
        await reader.stop()


def read_topics(group: str) -> set[str]:
    """The topics the group's service reads, by the design's table (`mlops.bus.acl.READS`)."""
    service = next(name for name, groups in CONSUMER_GROUPS.items() if group in groups)
    return {spec_for(event).topic for event in acl.READS[service]}


async def group_lag(kafka: KafkaSettings, group: str) -> int:
    """Records the group has not committed yet, over the partitions of the topics its service reads.

    A topic the service read once and reads no more (the trainer's `mlops.data.committed`, before the
    registry became the one writer of data set versions) keeps its last offset in the group on a
    stack that ran the old code; it is not a backlog."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    reads = read_topics(group)
    committed = {tp: meta for tp, meta in committed.items() if tp.topic in reads}
    if not committed:
        return 0
    ends = await end_offsets(kafka, {tp.topic for tp in committed})
    return sum(max(0, ends.get(tp, 0) - meta.offset) for tp, meta in committed.items() if meta.offset >= 0)


def header(record, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return value.decode(errors="replace") if value is not None else None
    return None


# --- what the services said, in a failed test's report ------------------------------------------

pytest_runtest_call = service_logs.pytest_runtest_call


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    service_logs.report_on_failure(item, report, STACK / "logs")
    return report


def pytest_terminal_summary(terminalreporter):
    service_logs.summarise_failures(terminalreporter)
