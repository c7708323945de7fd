"""The registry as the monitor uses it, and the cache that keeps it off the hot paths.

Specs are re-read after `spec_cache_s` (a newly applied spec takes effect within that); a version's
profile never changes, so it is read once, from the artifact store with its sha256 verified. Model
names and version numbers come from events, so every map here is an LRU with a bound of its own
(`max_cached_models`, `max_cached_versions`): a name forgotten is read again when next needed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from mlops.errors import FailedPrecondition, NotFound
from mlops.grpc.registry import RegistryPeer
from mlops.profile import ReferenceProfile
from mlops.registry.v1 import registry_pb2 as pb
from mlops.store import ArtifactStore
from services.monitor.lru import LRU
from services.monitor.reference import Reference


class RegistryClient(RegistryPeer):
    """The reads the monitor makes; it writes nothing to the registry (data it assembles for a retrain
    is committed as an event, and the registry records it)."""


@dataclass(frozen=True)
class VersionInfo:
    version: pb.ModelVersion
    reference: Reference | None
    """None when the version was registered without a profile: health only, no drift."""


class ModelCatalog:
    def __init__(
        self,
        registry: RegistryClient,
        store: ArtifactStore,
        *,
        spec_ttl_s: float,
        unknown_ttl_s: float,
        max_models: int = 10_000,
        max_versions: int = 1_000,
    ) -> None:
        self.registry = registry
        self.store = store
        self.spec_ttl_s = spec_ttl_s
        self.unknown_ttl_s = unknown_ttl_s
        self._specs: LRU[str, tuple[float, pb.ModelSpecVersion | None]] = LRU(max_models)
        self._versions: LRU[tuple[str, int], VersionInfo] = LRU(max_versions)
        # One lock per name being looked up. A lock pushed out while held only lets a second caller
        # read the same thing from the registry once more.
        self._locks: LRU[object, asyncio.Lock] = LRU(max_models + max_versions)

    def cached_spec(self, model: str) -> pb.ModelSpecVersion | None:
        entry = self._specs.peek(model)
        return entry[1] if entry else None

    def cached_version(self, model: str, version: int) -> VersionInfo | None:
        return self._versions.peek((model, version))

    async def spec(self, model: str) -> pb.ModelSpecVersion:
        """The model's latest spec; NotFound if the registry has none (remembered for a few seconds)."""
        entry = self._specs.get(model)
        now = time.monotonic()
        if entry is not None and now - entry[0] < (self.spec_ttl_s if entry[1] else self.unknown_ttl_s):
            if entry[1] is None:
                raise NotFound(f"model {model!r} has no spec in the registry")
            return entry[1]
        async with self._lock(model):
            entry = self._specs.get(model)
            if entry is None or time.monotonic() - entry[0] >= self.spec_ttl_s or entry[1] is None:
                try:
                    spec = await self.registry.model_spec(model)
                except NotFound:
                    self._specs[model] = (time.monotonic(), None)
                    raise NotFound(f"model {model!r} has no spec in the registry") from None
                self._specs[model] = (time.monotonic(), spec)
            spec = self._specs[model][1]
        assert spec is not None
        return spec

    async def version(self, model: str, version: int) -> VersionInfo:
        """The version and its compiled training profile (read once, sha256 verified)."""
        info = self._versions.get((model, version))
        if info is not None:
            return info
        async with self._lock((model, version)):
            info = self._versions.get((model, version))
            if info is None:
                registered = await self.registry.model_version(model, version)
                reference = None
                if registered.profile_uri:
                    text = await self.store.get_bytes(registered.profile_uri, registered.profile_sha256)
                    try:
                        reference = Reference.of(ReferenceProfile.from_json(text), registered.profile_sha256)
                    except Exception as error:  # the stored profile's fault, not the batch's
                        raise FailedPrecondition(
                            f"the training profile of {model} v{version} ({registered.profile_uri}) "
                            f"does not parse: {type(error).__name__}: {error}"
                        ) from error
                info = self._versions[(model, version)] = VersionInfo(registered, reference)
        return info

    def _lock(self, key: object) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock
