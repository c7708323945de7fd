"""The registry as the inference server uses it: a loaded version's text-feature vocabularies.

The desired state names features and classes; how a text feature's values map to the codes the
graph takes lives in the version's signature in the registry (`ModelSignature.categories`).
"""

from __future__ import annotations

import logging

import grpc

from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc

log = logging.getLogger(__name__)


class RegistrySignatures:
    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float = 10.0) -> None:
        self.stub = registry_pb2_grpc.RegistryStub(channel)
        self.timeout_s = timeout_s

    async def categories(self, model: str, version: int) -> dict[str, tuple[str, ...]]:
        """Vocabularies by feature; empty (logged) when the registry does not know the version or is down:
        text features are then taken as codes only."""
        try:
            reply = await self.stub.GetModelVersion(
                pb.GetModelVersionRequest(model=model, version=version), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "%s v%d: no signature from the registry (%s: %s); text features are taken as codes",
                model,
                version,
                error.code().name,
                error.details(),
            )
            return {}
        return {name: tuple(vocabulary.values) for name, vocabulary in reply.signature.categories.items()}
