"""The inference server's view of the registry: confirmation of a version's bytes, and its bounded cache."""

from __future__ import annotations

import grpc
import pytest

from mlops.errors import DeadlineExceeded, IntegrityError, NotFound, Unavailable
from mlops.outages import is_outage
from mlops.registry.v1 import registry_pb2 as pb
from services.inference.signatures import RegistryVersions


class FakePeer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.failure: Exception | None = None

    async def model_version(self, model: str, version: int) -> pb.ModelVersion:
        self.calls.append((model, version))
        if self.failure is not None:
            raise self.failure
        if version > 100:
            raise NotFound(f"model {model!r} has no version {version}")
        record = pb.ModelVersion(model=model, version=version, artifact_sha256=f"{version:064d}")
        record.signature.categories["colour"].values.extend(["red", "white"])
        return record


def versions(**options) -> tuple[RegistryVersions, FakePeer]:
    registry = RegistryVersions(grpc.aio.insecure_channel("127.0.0.1:1"), **options)
    registry.peer = peer = FakePeer()
    return registry, peer


async def test_the_registered_sha256_is_confirmed_and_another_refused():
    registry, _ = versions()
    assert await registry.confirmed("m", 3, f"{3:064d}") == {"colour": ("red", "white")}
    with pytest.raises(
        IntegrityError, match=f"names artifact sha256 {'f' * 64}, but the registry holds {3:064d}"
    ):
        await registry.confirmed("m", 3, "f" * 64)
    with pytest.raises(NotFound, match="the registry holds no version 101 of model 'm'"):
        await registry.confirmed("m", 101, f"{101:064d}")


async def test_records_are_cached_under_a_bound_and_unknown_versions_are_not():
    registry, peer = versions(max_cached=2)
    for number in (1, 2, 1, 3):
        await registry.record("m", number)
    assert peer.calls == [("m", 1), ("m", 2), ("m", 3)], "1 came from the cache"
    assert list(registry._records) == [("m", 1), ("m", 3)], "2, least recently used, left"
    for _ in range(2):
        with pytest.raises(NotFound):
            await registry.record("m", 101)
    assert peer.calls.count(("m", 101)) == 2


async def test_a_registry_that_does_not_answer_is_an_outage_not_a_refusal():
    registry, peer = versions()
    for failure in (Unavailable("connection refused"), DeadlineExceeded("deadline exceeded")):
        peer.failure = failure
        with pytest.raises(Unavailable) as raised:
            await registry.confirmed("m", 1, f"{1:064d}")
        assert is_outage(raised.value)


async def test_without_confirmation_an_unknown_version_only_loses_its_vocabularies():
    registry, _ = versions(confirm=False)
    assert await registry.confirmed("m", 101, "anything") == {}
    assert await registry.confirmed("m", 2, "anything") == {"colour": ("red", "white")}
