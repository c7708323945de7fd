"""Streaming reads of the file:// store: chunks of a bounded size, hashed on the way through."""

from __future__ import annotations

import hashlib
import os

import pytest

from mlops.errors import NotFound
from mlops.store import FileStore, FileStoreConfig
from mlops.store.base import CHUNK, HashingChunks


async def test_an_object_streams_in_bounded_chunks_and_hashes_to_its_address(tmp_path):
    store = FileStore(FileStoreConfig(root=tmp_path / "artifacts"))
    data = os.urandom(2 * CHUNK + 123)
    ref = await store.put_bytes("datasets/wine", "data.bin", data)
    with store.open_stream(ref.uri) as chunks:
        hashed = HashingChunks(chunks)
        first = next(hashed)
        sizes = [len(first)] + [len(chunk) for chunk in hashed]
    assert max(sizes) <= CHUNK and sum(sizes) == len(data)
    assert hashed.drain() == ref.sha256 == hashlib.sha256(data).hexdigest() and hashed.size == len(data)


def test_a_missing_object_is_not_found(tmp_path):
    store = FileStore(FileStoreConfig(root=tmp_path))
    with pytest.raises(NotFound, match="does not exist"), store.open_stream(store.uri_for("d/x/gone")):
        pass
