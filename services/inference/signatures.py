"""The registry as the inference server uses it: the record of each version a desired state names.

The desired state says which artifact to load; the registry, the system of record, says which bytes
that version is. With `confirm` on, a version is loaded only when the registry holds the desired
state's sha256 for it (anyone who can write the desired-state topic could otherwise have any bytes
served). The record also carries how a text feature's values map to the codes the graph takes
(`ModelSignature.categories`), and how its graph is fed and read (`ModelSignature.inputs[].columns`,
`outputs[].role`), which it hands over as the vocabularies' `signature`. Versions are immutable, so a record is cached per (model, version),
with a bound.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import grpc

from mlops.errors import DeadlineExceeded, IntegrityError, MlopsError, NotFound, Unavailable
from mlops.grpc.registry import RegistryPeer
from mlops.registry.v1 import registry_pb2 as pb

log = logging.getLogger(__name__)


class Categories(dict[str, tuple[str, ...]]):
    """The vocabularies of a version's text features (name → values in code order), and the registry's
    signature of the version when it was read (None otherwise)."""

    signature: pb.ModelSignature | None = None

    @classmethod
    def of(cls, record: pb.ModelVersion, *, vocabularies: bool = True) -> Categories:
        found = cls(_categories(record)) if vocabularies else cls()
        found.signature = record.signature if vocabularies and record.HasField("signature") else None
        return found


class RegistryVersions:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout_s: float = 10.0,
        confirm: bool = True,
        categories: bool = True,
        max_cached: int = 1024,
    ) -> None:
        """`confirm`: refuse a version whose sha256 the registry does not hold; `categories`: read the
        vocabularies; `max_cached`: records kept, least recently used dropped first."""
        self.peer = RegistryPeer(channel, timeout_s=timeout_s)
        self.confirm = confirm
        self.categories = categories
        self.max_cached = max_cached
        self._records: OrderedDict[tuple[str, int], pb.ModelVersion] = OrderedDict()

    async def record(self, model: str, version: int) -> pb.ModelVersion:
        """The registry's record of the version (cached); NotFound when it holds none. Only records are
        cached: a version unknown now may be registered later."""
        key = (model, version)
        if key in self._records:
            self._records.move_to_end(key)
            return self._records[key]
        try:
            record = await self.peer.model_version(model, version)
        except DeadlineExceeded as error:
            raise Unavailable(f"the registry did not answer in time: {error.message}") from error
        self._records[key] = record
        while len(self._records) > self.max_cached:
            self._records.popitem(last=False)
        return record

    async def confirmed(self, model: str, version: int, sha256: str) -> Categories:
        """The version's vocabularies, once the registry holds `sha256` for it (`confirm`). Without
        `confirm`, an unknown version or an unreachable registry only leaves the vocabularies out."""
        if not self.confirm:
            if not self.categories:
                return Categories()
            try:
                record = await self.record(model, version)
            except MlopsError as error:
                log.warning(
                    "%s v%d: no signature from the registry (%s); text features are taken as codes",
                    model,
                    version,
                    error.message,
                )
                return Categories()
            return Categories.of(record)
        try:
            record = await self.record(model, version)
        except NotFound:
            raise NotFound(
                f"the registry holds no version {version} of model {model!r}; only registered versions are loaded"
            ) from None
        if record.artifact_sha256 != sha256:
            raise IntegrityError(
                f"{model} v{version}: the desired state names artifact sha256 {sha256 or '(none)'}, but the "
                f"registry holds {record.artifact_sha256} for that version; not loaded"
            )
        return Categories.of(record, vocabularies=self.categories)


def _categories(record: pb.ModelVersion) -> dict[str, tuple[str, ...]]:
    return {name: tuple(vocabulary.values) for name, vocabulary in record.signature.categories.items()}
