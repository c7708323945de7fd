"""Files that travel in chunks: a header then the bytes on the way in, slices of at most 1 MiB on the
way out. Bounded at every step, so a caller can neither send a chunk nor a file past the limits."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from mlops.errors import InvalidArgument
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import check_sha, need

MAX_CHUNK = 4 << 20
"""The largest chunk a caller may send (the platform's gRPC message limit leaves room for it)."""
DOWNLOAD_CHUNK = 1 << 20


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


async def receive(parts: AsyncIterable[Any], *, what: str, limit: int) -> tuple[Any, bytes]:
    """(header, bytes) of a stream (RegisterModelRequest, UploadRunArtifactRequest) whose first message is the header and the others chunks in order."""
    stream = aiter(parts)
    first = await anext(stream, None)
    need(
        first is not None and first.WhichOneof("part") == "header",
        f"the first message of {what} must be the header (what the bytes are), then the file's chunks",
    )
    assert first is not None
    buffer = bytearray()
    async for part in stream:
        kind = part.WhichOneof("part")
        need(
            kind == "chunk",
            f"{what}: only the first message may be a header; send the file's bytes as chunks",
        )
        need(
            len(part.chunk) <= MAX_CHUNK,
            f"{what}: a chunk of {mib(len(part.chunk))} is larger than the {mib(MAX_CHUNK)} allowed; "
            "send the file in smaller chunks",
        )
        if len(buffer) + len(part.chunk) > limit:
            raise InvalidArgument(
                f"{what}: the file is larger than the {mib(limit)} the registry accepts "
                "(MLOPS_REGISTRY_MAX_ARTIFACT_BYTES)"
            )
        buffer.extend(part.chunk)
    return first.header, bytes(buffer)


def checked_digest(data: bytes, *, size: int, sha256: str, name: str) -> str:
    """The sha256 of `data`, after checking the size and sha256 the caller announced (when it did)."""
    need(bool(data), f"{name} is empty: no bytes arrived after the header")
    if size:
        need(size == len(data), f"{name}: {len(data)} bytes arrived, the header announced {size}")
    digest = hashlib.sha256(data).hexdigest()
    if sha256:
        check_sha(sha256, "sha256")
        need(
            sha256 == digest,
            f"{name}: the bytes that arrived hash to sha256 {digest}, the header announced {sha256}; "
            "the file changed or was cut on the way, send it again",
        )
    return digest


async def chunks_of(data: bytes, *, uri: str, sha256: str) -> AsyncIterator[pb.ArtifactChunk]:
    """`data` as ArtifactChunks of at most 1 MiB; the first carries the whole file's size, sha256, uri."""
    for offset in range(0, max(len(data), 1), DOWNLOAD_CHUNK):
        chunk = pb.ArtifactChunk(data=data[offset : offset + DOWNLOAD_CHUNK])
        if offset == 0:
            chunk.size_bytes, chunk.sha256, chunk.uri = len(data), sha256, uri
        yield chunk
