"""The artifact store's abstract base and the helpers every backend shares."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mlops.errors import IntegrityError, InvalidArgument

CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")

Progress = Callable[[int], None]
"""Called with the number of bytes just transferred."""


@dataclass(frozen=True)
class ArtifactRef:
    """Where an artifact lives and what its bytes hash to."""

    uri: str
    sha256: str
    size: int


def sha256_of_file(path: Path, progress: Progress | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest(), size


def content_key(namespace: str, sha256: str, filename: str) -> str:
    """`<namespace>/<sha256>/<filename>`, after checking each part cannot escape its place."""
    parts = [p for p in namespace.strip("/").split("/") if p]
    if not parts:
        raise InvalidArgument("artifact namespace is empty; expected e.g. 'models/wine-quality'")
    for part in [*parts, filename]:
        if part in (".", "..") or not _SEGMENT.match(part):
            raise InvalidArgument(
                f"artifact path segment {part!r} is not allowed; use letters, digits, '.', '_' and '-'"
            )
    if not _SHA256.match(sha256):
        raise InvalidArgument(f"{sha256!r} is not a lowercase hex sha256")
    return f"{'/'.join(parts)}/{sha256}/{filename}"


def split_content_address(key: str) -> tuple[str, str, str]:
    """(namespace, sha256, filename) of a content-addressed key."""
    parts = key.strip("/").split("/")
    if len(parts) < 3 or not _SHA256.match(parts[-2]):
        raise InvalidArgument(f"{key!r} is not a content address '<namespace>/<sha256>/<file>'")
    return "/".join(parts[:-2]), parts[-2], parts[-1]


def expected_sha256(key: str, sha256: str | None) -> str:
    """The checksum a read must match: the caller's, else the one in the address itself."""
    if sha256 is not None:
        if not _SHA256.match(sha256):
            raise InvalidArgument(f"{sha256!r} is not a lowercase hex sha256")
        return sha256
    return split_content_address(key)[1]


def verify(uri: str, expected: str, actual: str) -> None:
    if actual != expected:
        raise IntegrityError(
            f"artifact {uri} is corrupt or was replaced: its bytes hash to sha256 {actual}, "
            f"but {expected} was recorded; refusing to use it"
        )


def atomic_write(target: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file in the same directory, so readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _HashingWriter:
    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.handle.write(data)


def download_verified(uri: str, dest: Path, expected: str, fetch: Callable[[BinaryIO], None]) -> None:
    """Fetch into a temporary file while hashing; only verified bytes ever reach `dest`."""

    def write(handle: BinaryIO) -> None:
        hashing = _HashingWriter(handle)
        fetch(hashing)  # type: ignore[arg-type]
        verify(uri, expected, hashing.digest.hexdigest())

    atomic_write(dest, write)


class HashingChunks:
    """Passes chunks through while hashing and counting them, so that one read both checks and serves."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.digest = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        chunk = next(self._chunks)
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk

    def drain(self) -> str:
        """Read what the consumer left and return the sha256 of every byte."""
        for _ in self:
            pass
        return self.digest.hexdigest()


class ArtifactStore(ABC):
    """Content-addressed object storage. Implementations differ only in where the bytes go."""

    scheme: str

    @abstractmethod
    async def put_bytes(self, namespace: str, filename: str, data: bytes) -> ArtifactRef:
        """Store bytes at `<namespace>/<sha256>/<filename>`; storing the same bytes twice is a no-op."""

    @abstractmethod
    async def put_file(
        self, namespace: str, filename: str, path: Path, progress: Progress | None = None
    ) -> ArtifactRef:
        """Store a file, streaming it (large files go up in parts)."""

    @abstractmethod
    async def get_bytes(self, uri: str, sha256: str | None = None) -> bytes:
        """Read an artifact and verify it; `IntegrityError` when the bytes do not match."""

    @abstractmethod
    async def get_file(self, uri: str, dest: Path, sha256: str | None = None) -> Path:
        """Download to `dest` and verify; a mismatching download is deleted, never left behind."""

    @abstractmethod
    def open_stream(self, uri: str) -> AbstractContextManager[Iterator[bytes]]:
        """The object's bytes as chunks of at most `CHUNK`, read as they are consumed, unverified.

        Blocking: call it from a thread, so that a large object costs neither the event loop's time
        nor memory in proportion to its size. The caller hashes what it reads (`HashingChunks`) and
        checks the sum with `verify` once the last chunk is in.
        """

    @abstractmethod
    async def exists(self, uri: str) -> bool:
        """Whether an object is stored at `uri` (its bytes are not checked)."""

    @abstractmethod
    def uri_for(self, key: str) -> str:
        """The full URI of a key in this store."""
