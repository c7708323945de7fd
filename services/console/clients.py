"""The services, called as the person signed in: their bearer token on every call, so that each
service's own access table decides (viewers read, operators act), and a small per-person cache of
reads."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message

from mlops.deployer.v1 import deployer_pb2, deployer_pb2_grpc
from mlops.errors import DeadlineExceeded, InvalidArgument, MlopsError, PermissionDenied, Unavailable
from mlops.grpc import open_channel, raise_typed
from mlops.monitor.v1 import monitor_pb2_grpc
from mlops.registry.v1 import registry_pb2_grpc
from mlops.settings import GrpcClientSettings
from services.console.settings import ConsoleSettings

STUBS = {
    "registry": registry_pb2_grpc.RegistryStub,
    "deployer": deployer_pb2_grpc.DeployerStub,
    "monitor": monitor_pb2_grpc.MonitorStub,
}


class Caller(Protocol):
    """What pages use: one call to one service's method, as the signed-in person."""

    async def call(self, service: str, method: str, request: Message, *, cached: bool = True) -> Message: ...


class ReadCache:
    """Answers reused for a few seconds, keyed by the person (a hash of the token) and the request;
    bounded in entries, the least recently used dropped first."""

    def __init__(self, ttl_s: float, entries: int) -> None:
        self.ttl_s = ttl_s
        self.entries = entries
        self._items: OrderedDict[tuple, tuple[float, Message]] = OrderedDict()

    def get(self, key: tuple) -> Message | None:
        found = self._items.get(key)
        if found is None:
            return None
        at, value = found
        if time.monotonic() - at > self.ttl_s:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: tuple, value: Message) -> None:
        if self.entries == 0 or self.ttl_s == 0:
            return
        self._items[key] = (time.monotonic(), value)
        self._items.move_to_end(key)
        while len(self._items) > self.entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def token_key(token: str) -> str:
    """Who a cached answer belongs to, without keeping the token itself as a key."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class Platform:
    """One channel per service for the whole console; each call carries the person's token."""

    def __init__(self, settings: ConsoleSettings, security: GrpcClientSettings | None = None) -> None:
        security = GrpcClientSettings() if security is None else security
        # The console never calls as itself: no token or certificate of its own, only the person's.
        security = security.model_copy(update={"token": None, "cert_file": None, "key_file": None})
        self.settings = settings
        self.addresses = {
            "registry": settings.registry_addr,
            "deployer": settings.deployer_addr,
            "monitor": settings.monitor_addr,
        }
        self.channels = {name: open_channel(addr, security=security) for name, addr in self.addresses.items()}
        self.stubs = {name: STUBS[name](channel) for name, channel in self.channels.items()}
        self.cache = ReadCache(settings.cache_ttl_s, settings.cache_entries)

    def as_person(self, token: str) -> PersonCaller:
        return PersonCaller(self, token)

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


@dataclass
class PersonCaller:
    platform: Platform
    token: str

    async def call(self, service: str, method: str, request: Message, *, cached: bool = True) -> Message:
        key = (token_key(self.token), service, method, request.SerializeToString(deterministic=True))
        if cached:
            hit = self.platform.cache.get(key)
            if hit is not None:
                return hit
        rpc = getattr(self.platform.stubs[service], method)
        timeout = self.platform.settings.call_timeout_s
        try:
            with raise_typed():
                answer = await rpc(
                    request, timeout=timeout, metadata=(("authorization", f"Bearer {self.token}"),)
                )
        except Unavailable as error:
            raise Unavailable(
                f"the {service} at {self.platform.addresses[service]} is unavailable: {error.message}"
            ) from None
        except DeadlineExceeded:
            raise DeadlineExceeded(f"the {service} did not answer within {timeout:g}s") from None
        if cached:
            self.platform.cache.put(key, answer)
        return answer


async def may_operate(caller: Caller) -> bool:
    """Whether the person is an operator or more, asked of the deployer's own access table: a pause
    of no rollout is refused for viewers before it is read, and refused as invalid for operators."""
    try:
        await caller.call("deployer", "Pause", deployer_pb2.RolloutActionRequest(), cached=False)
    except InvalidArgument:  # admitted, then refused for naming no rollout
        return True
    except (PermissionDenied, MlopsError):
        return False
    return True
