"""`file://` backend: the embedded default, a directory on local disk."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict

from mlops.errors import InvalidArgument, NotFound
from mlops.store.base import (
    CHUNK,
    ArtifactRef,
    ArtifactStore,
    Progress,
    atomic_write,
    content_key,
    download_verified,
    expected_sha256,
    sha256_of_file,
    verify,
)


class FileStoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["file"] = "file"
    root: Path
    """Absolute directory that holds every artifact."""


class FileStore(ArtifactStore):
    scheme = "file"

    def __init__(self, config: FileStoreConfig) -> None:
        self.root = config.root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def uri_for(self, key: str) -> str:
        return (self.root / key).as_uri()

    def _path(self, uri: str) -> tuple[Path, str]:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise InvalidArgument(f"{uri!r} is not a file:// URI")
        path = Path(unquote(parsed.path)).resolve()
        try:
            key = path.relative_to(self.root).as_posix()
        except ValueError:
            raise InvalidArgument(f"{uri} is outside the artifact root {self.root}") from None
        return path, key

    async def put_bytes(self, namespace: str, filename: str, data: bytes) -> ArtifactRef:
        sha = hashlib.sha256(data).hexdigest()
        key = content_key(namespace, sha, filename)
        target = self.root / key
        if not target.exists():
            await asyncio.to_thread(atomic_write, target, lambda handle: handle.write(data))
        return ArtifactRef(uri=target.as_uri(), sha256=sha, size=len(data))

    async def put_file(
        self, namespace: str, filename: str, path: Path, progress: Progress | None = None
    ) -> ArtifactRef:
        sha, size = await asyncio.to_thread(sha256_of_file, path, progress)
        key = content_key(namespace, sha, filename)
        target = self.root / key
        if not target.exists():

            def copy(handle) -> None:
                with path.open("rb") as source:
                    shutil.copyfileobj(source, handle, 1 << 20)

            await asyncio.to_thread(atomic_write, target, copy)
        return ArtifactRef(uri=target.as_uri(), sha256=sha, size=size)

    async def get_bytes(self, uri: str, sha256: str | None = None) -> bytes:
        path, key = self._path(uri)
        expected = expected_sha256(key, sha256)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise NotFound(f"artifact {uri} does not exist") from None
        verify(uri, expected, hashlib.sha256(data).hexdigest())
        return data

    async def get_file(self, uri: str, dest: Path, sha256: str | None = None) -> Path:
        path, key = self._path(uri)
        expected = expected_sha256(key, sha256)
        if not path.is_file():
            raise NotFound(f"artifact {uri} does not exist")

        def copy(handle) -> None:
            with path.open("rb") as source:
                shutil.copyfileobj(source, handle, 1 << 20)

        await asyncio.to_thread(download_verified, uri, dest, expected, copy)
        return dest

    @contextmanager
    def open_stream(self, uri: str) -> Iterator[Iterator[bytes]]:
        path, _ = self._path(uri)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"artifact {uri} does not exist") from None
        with handle:
            yield iter(lambda: handle.read(CHUNK), b"")

    async def exists(self, uri: str) -> bool:
        path, _ = self._path(uri)
        return path.is_file()
