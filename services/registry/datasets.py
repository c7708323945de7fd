"""Checking a data set before it is recorded: its bytes hash to the sha256 claimed, and what it holds.

One read does both, streamed in chunks on a worker thread: a 100 MB file costs neither 100 MB of
memory nor the event loop's time, and the loop keeps serving gRPC calls and the consumer meanwhile.
"""

from __future__ import annotations

import asyncio

from opentelemetry import trace

from mlops import tabular
from mlops.errors import InvalidArgument
from mlops.registry.v1 import registry_pb2 as pb
from mlops.store import ArtifactStore
from mlops.store.base import HashingChunks, verify

tracer = trace.get_tracer("mlops.registry")


class DatasetChecker:
    """Reads committed data sets back from the artifact store and describes them."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    async def check(self, uri: str, sha256: str, data_format: str) -> tabular.TableFacts:
        """The file's columns and row count, once its bytes are known to hash to `sha256`.

        `NotFound` when there is no such object, `IntegrityError` when its bytes differ,
        `InvalidArgument` when it is not the table its format says; the store's own errors
        (`Unavailable`, `PermissionDenied`, `FailedPrecondition`) pass through.
        """
        if not sha256:
            raise InvalidArgument("the data set has no sha256; send the file's checksum")
        with tracer.start_as_current_span(
            "check data set", attributes={"mlops.dataset.uri": uri, "mlops.dataset.format": data_format}
        ) as span:
            facts, size = await asyncio.to_thread(self._read, uri, sha256, data_format)
            span.set_attribute("mlops.dataset.bytes", size)
            span.set_attribute("mlops.dataset.rows", facts.row_count)
            return facts

    def _read(self, uri: str, sha256: str, data_format: str) -> tuple[tabular.TableFacts, int]:
        with self.store.open_stream(uri) as chunks:
            hashed = HashingChunks(chunks)
            try:
                facts = tabular.describe(hashed, data_format)
            except InvalidArgument:
                # Bytes that are not what was committed explain a bad table better than its syntax.
                verify(uri, sha256, hashed.drain())
                raise
            verify(uri, sha256, hashed.drain())
        return facts, hashed.size

    async def described(self, request: pb.RecordDatasetVersionRequest) -> pb.RecordDatasetVersionRequest:
        """The request once its object is checked, with the columns and row count it left out filled in."""
        facts = await self.check(request.uri, request.sha256, request.format)
        described = pb.RecordDatasetVersionRequest()
        described.CopyFrom(request)
        if not described.columns:
            described.columns.extend(facts.columns)
        if not described.row_count:
            described.row_count = facts.row_count
        return described
