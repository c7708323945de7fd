"""The registry checks every data set it records, from gRPC and from Kafka alike, against the real
S3 server: the object exists, hashes to its sha256, and is described in one streamed pass that
keeps neither the file in memory nor the event loop waiting."""

from __future__ import annotations

import asyncio
import io
import time
import tracemalloc
import uuid
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from mlops.bus import EventContext
from mlops.db import migrate
from mlops.envelope import Envelope
from mlops.errors import PermissionDenied
from mlops.events.v1 import data_pb2
from mlops.grpc import GrpcServer, open_channel
from mlops.outages import is_outage
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.settings import GrpcServerSettings
from mlops.store import open_store
from services.registry.__main__ import MIGRATIONS
from services.registry.core import RegistryCore
from services.registry.datasets import DatasetChecker
from services.registry.handlers import RegistryHandlers
from services.registry.servicer import RegistryServicer
from services.registry.settings import RegistrySettings
from services.registry.tables import SCHEMA

BIG_FILE_BYTES = 100 << 20
MAX_CHECK_MEMORY = 64 << 20
MAX_LOOP_GAP_S = 0.2


def checking_core(database, store) -> RegistryCore:
    return RegistryCore(
        database, Outbox(SCHEMA, source="mlops-registry-tests"), RegistrySettings(), DatasetChecker(store)
    )


@pytest.fixture(scope="module")
async def checking(database, artifact_settings):
    """The registry's API with a core that reads every data set back from the real S3, as the service's does."""
    await migrate(database, MIGRATIONS, SCHEMA)
    store = open_store(artifact_settings)
    core = checking_core(database, store)
    server = GrpcServer(GrpcServerSettings(port=0))
    server.add(
        lambda s: registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(core), s),
        "mlops.registry.v1.Registry",
    )
    port = await server.start()
    await server.set_serving()
    channel = open_channel(f"127.0.0.1:{port}")
    yield registry_pb2_grpc.RegistryStub(channel), core, store
    await channel.close()
    await server.stop()


def columns_of(version: pb.DatasetVersion) -> list[tuple[str, str, bool]]:
    return [(c.name, c.type, c.nullable) for c in version.columns]


async def test_recording_over_grpc_checks_the_object_its_sha256_and_describes_it(checking, unique):
    stub, _, store = checking
    data = b"alcohol,colour,target\n13.2,red,1\n12.1,,0\n14.0,red,1\n"
    ref = await store.put_bytes(f"datasets/ds-{unique}", "data.csv", data)
    recorded = await stub.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(dataset=f"ds-{unique}", uri=ref.uri, sha256=ref.sha256, format="csv")
    )
    version = recorded.dataset_version
    assert recorded.created and version.row_count == 3
    assert columns_of(version) == [
        ("alcohol", "float64", False),
        ("colour", "string", True),
        ("target", "int64", False),
    ]

    with pytest.raises(grpc.aio.AioRpcError) as mismatch:
        await stub.RecordDatasetVersion(
            pb.RecordDatasetVersionRequest(dataset=f"ds-{unique}", uri=ref.uri, sha256="0" * 64, format="csv")
        )
    assert mismatch.value.code() == grpc.StatusCode.DATA_LOSS
    assert "refusing to use it" in mismatch.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.RecordDatasetVersion(
            pb.RecordDatasetVersionRequest(
                dataset=f"ds-{unique}-gone",
                uri=ref.uri.replace("data.csv", "gone.csv"),
                sha256=ref.sha256,
                format="csv",
            )
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "does not exist" in missing.value.details()
    listed = await stub.ListDatasetVersions(pb.ListDatasetVersionsRequest(dataset=f"ds-{unique}"))
    assert [v.version for v in listed.versions] == [1], "a refused claim records nothing"


async def test_a_parquet_data_set_is_described_from_its_footer(checking, unique):
    stub, _, store = checking
    frame = pd.DataFrame({"x": [1.5, None, 2.5, 4.0], "n": [1, 2, 3, 4], "s": ["a", "b", "c", "d"]})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, row_group_size=2)
    ref = await store.put_bytes(f"datasets/pq-{unique}", "data.parquet", buffer.getvalue())
    recorded = await stub.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(
            dataset=f"pq-{unique}", uri=ref.uri, sha256=ref.sha256, format="parquet"
        )
    )
    assert recorded.dataset_version.row_count == 4
    assert columns_of(recorded.dataset_version) == [
        ("x", "float64", True),
        ("n", "int64", False),
        ("s", "string", False),
    ]


async def test_a_store_that_refuses_for_good_fails_the_call_at_once(
    checking, database, monkeypatch, artifact_settings, unique
):
    """A wrong secret key: PERMISSION_DENIED over gRPC, and no outage for a consumer to wait out."""
    _, _, store = checking
    ref = await store.put_bytes(f"datasets/deny-{unique}", "data.csv", b"a,b\n1,2\n")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-" + unique)
    core = checking_core(database, open_store(artifact_settings))
    request = pb.RecordDatasetVersionRequest(
        dataset=f"deny-{unique}", uri=ref.uri, sha256=ref.sha256, format="csv"
    )
    server = GrpcServer(GrpcServerSettings(port=0))
    server.add(
        lambda s: registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(core), s),
        "mlops.registry.v1.Registry",
    )
    port = await server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await registry_pb2_grpc.RegistryStub(channel).RecordDatasetVersion(request, timeout=30)
        elapsed = time.monotonic() - started
    finally:
        await channel.close()
        await server.stop()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, caught.value.details()
    assert elapsed < 5, f"refused after {elapsed:.1f} s"
    with pytest.raises(PermissionDenied) as direct:
        await core.record_dataset_version(request)
    assert not is_outage(direct.value) and not direct.value.retryable, "a consumer dead-letters it"


def write_big_csv(path: Path, size: int, unique: str) -> int:
    """About `size` bytes of CSV written a block at a time; returns its data rows."""
    rng = np.random.default_rng(7)
    rows_per_block = 20_000
    block = pd.DataFrame(
        {
            "id": np.arange(rows_per_block),
            "price": rng.normal(100, 15, rows_per_block).round(3),
            "name": rng.choice(["red", "white", "rosé", "sparkling"], rows_per_block),
            "note": np.where(rng.random(rows_per_block) < 0.1, "", "kept in oak"),
        }
    ).to_csv(index=False, header=False)
    rows = 1
    with path.open("w", encoding="utf-8") as handle:
        handle.write(f"id,price,name,note\n0,1.5,{unique},\n")
        while handle.tell() < size:
            handle.write(block)
            rows += rows_per_block
    return rows


async def test_checking_a_100_mb_commit_streams_it_off_the_event_loop(
    checking, database, artifact_settings, unique, tmp_path
):
    _, _, store = checking
    path = tmp_path / "big.csv"
    rows = await asyncio.to_thread(write_big_csv, path, BIG_FILE_BYTES, unique)
    ref = await store.put_file(f"datasets/big-{unique}", "data.csv", path)
    path.unlink()
    handlers = RegistryHandlers(checking_core(database, store))
    event = data_pb2.DataCommitted(dataset=f"big-{unique}", uri=ref.uri, sha256=ref.sha256, format="csv")
    context = EventContext(
        envelope=Envelope(
            id=str(uuid.uuid4()), source="tests", type="mlops.data.committed.v1", time="", content_type=""
        ),
        topic="mlops.data.committed",
        partition=0,
        offset=0,
        key=event.dataset,
        attempt=1,
    )

    gaps = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        await handlers.on_data_committed(event, context)
        elapsed = time.monotonic() - started
        ticker.cancel()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    growth = peak - before
    longest = max(gaps)
    print(
        f"\nchecked {ref.size / 2**20:.0f} MiB, {rows} rows in {elapsed:.1f} s (under tracemalloc): "
        f"peak memory +{growth / 2**20:.1f} MiB, longest event loop gap {longest * 1000:.0f} ms"
    )
    recorded = await checking[0].GetDatasetVersion(pb.GetDatasetVersionRequest(dataset=event.dataset))
    assert recorded.row_count == rows and recorded.sha256 == ref.sha256
    assert columns_of(recorded) == [
        ("id", "int64", False),
        ("price", "float64", False),
        ("name", "string", False),
        ("note", "string", True),
    ]
    assert growth < MAX_CHECK_MEMORY, f"the check held {growth / 2**20:.0f} MiB"
    assert longest < MAX_LOOP_GAP_S, f"the event loop was blocked for {longest:.2f} s"
