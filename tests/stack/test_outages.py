"""A running service rides out a restart of PostgreSQL and Kafka: same process, back to work after."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import pytest

from mlops.bus import EventPublisher
from mlops.events.v1 import data_pb2
from mlops.grpc import open_sync_channel
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.settings import ArtifactSettings, BusSettings, KafkaSettings
from mlops.store import open_store

ROOT = Path(__file__).resolve().parents[2]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)


def registry_pid() -> str:
    return (ROOT / ".stack/run/registry.pid").read_text().strip()


def eventually(check, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except grpc.RpcError as error:
            last = error
        time.sleep(0.2)
    raise AssertionError(f"not recovered within {timeout_s}s (last error: {last})")


async def upload(dataset: str, data: bytes):
    return await open_store(ArtifactSettings()).put_bytes(f"datasets/{dataset}", "data.csv", data)


async def publish_commit(dataset: str) -> None:
    ref = await upload(dataset, b"x,y\n1,2\n3,4\n")
    publisher = EventPublisher(KafkaSettings(), BusSettings(), source="mlops-tests")
    await publisher.start()
    try:
        await publisher.publish(
            data_pb2.DataCommitted(dataset=dataset, uri=ref.uri, sha256=ref.sha256, format="csv")
        )
    finally:
        await publisher.stop()


def test_the_registry_keeps_running_through_a_database_and_broker_restart():
    up = run("make", "--no-print-directory", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    pid = registry_pid()

    down = run("bash", "infra/local/stack.sh", "down", "postgres", "kafka")
    assert down.returncode == 0, down.stdout + down.stderr
    with open_sync_channel("127.0.0.1:50051") as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListDatasets(pb.ListDatasetsRequest(), timeout=10)
        assert caught.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        back = run("bash", "infra/local/stack.sh", "up", "postgres", "kafka")
        assert back.returncode == 0, back.stdout + back.stderr

        name = f"outage-{uuid.uuid4().hex[:8]}"
        # The registry reads the object back and checks its sha256, so the data must really be there.
        ref = asyncio.run(upload(name, f"name\n{name}\n".encode()))
        request = pb.RecordDatasetVersionRequest(dataset=name, uri=ref.uri, sha256=ref.sha256, format="csv")
        recorded = eventually(lambda: stub.RecordDatasetVersion(request, timeout=5))
        assert recorded.dataset_version.version == 1

        # The Kafka side is back too: a data commit published now is consumed and recorded.
        committed = f"{name}-committed"
        asyncio.run(publish_commit(committed))
        version = eventually(
            lambda: stub.GetDatasetVersion(pb.GetDatasetVersionRequest(dataset=committed), timeout=5)
        )
        assert version.version == 1 and version.row_count == 2
    assert Path(f"/proc/{pid}").exists() and registry_pid() == pid, "the registry process survived the outage"
    status = run("bash", "infra/local/services.sh", "status")
    assert status.returncode == 0, status.stdout
