"""Calls to the registry over one gRPC channel: TLS and a bearer token as configured, bounded retries
on UNAVAILABLE with exponential backoff, and typed errors carrying the server's message.

Every registry call the client makes is idempotent (run ids are chosen here, metrics are keyed by run
and step, files and models by their sha256), so a call that failed on an unreachable server can be
sent again, streams included: their messages are rebuilt from bytes held in memory.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from mlops_client import protocol
from mlops_client.config import Connection
from mlops_client.errors import Unavailable, from_rpc_error

T = TypeVar("T")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Transport:
    """One channel to the registry and the calls the client makes on it."""

    def __init__(
        self,
        connection: Connection,
        *,
        timeout_s: float = 30.0,
        max_attempts: int = 4,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.connection = connection
        self.timeout_s = timeout_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._channel = open_channel(connection)

    def close(self) -> None:
        self._channel.close()

    def unary(self, name: str, request: Message, *, timeout_s: float | None = None) -> Message:
        path, request_class, response_class, _, _ = protocol.method(name)
        call = self._channel.unary_unary(
            path,
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        return self._retry(lambda: call(request, timeout=timeout_s or self.timeout_s))

    def client_stream(
        self, name: str, requests: Callable[[], Iterable[Message]], *, timeout_s: float | None = None
    ) -> Message:
        """A client-streaming call; `requests` makes the messages afresh for each attempt."""
        path, request_class, response_class, _, _ = protocol.method(name)
        call = self._channel.stream_unary(
            path,
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        return self._retry(lambda: call(iter(requests()), timeout=timeout_s or self.timeout_s))

    def server_stream(self, name: str, request: Message, *, timeout_s: float | None = None) -> list[Message]:
        """A server-streaming call, read to its end (a retry starts it over)."""
        path, request_class, response_class, _, _ = protocol.method(name)
        call = self._channel.unary_stream(
            path,
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        return self._retry(lambda: list(call(request, timeout=timeout_s or self.timeout_s)))

    def paged(self, name: str, request: Message, items: str, limit: int = 0) -> Iterator[Message]:
        """Every item of a paged list (`limit` 0: all), following `next_page_token`."""
        seen = 0
        while True:
            request.page_size = min(limit - seen, 1000) if limit else 1000
            page = self.unary(name, request)
            for item in getattr(page, items):
                yield item
                seen += 1
                if limit and seen >= limit:
                    return
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def _retry(self, attempt: Callable[[], T]) -> T:
        delay = self.backoff_s
        for number in range(1, self.max_attempts + 1):
            try:
                return attempt()
            except grpc.RpcError as error:
                unavailable = error.code() == grpc.StatusCode.UNAVAILABLE
                if not unavailable or number == self.max_attempts:
                    typed = from_rpc_error(error)
                    if unavailable:
                        typed = Unavailable(
                            f"the registry at {self.connection.address} is unavailable"
                            f" after {number} attempt(s): {typed.message}"
                        )
                    raise typed from None
            # full jitter, so that many clients do not retry in step
            time.sleep(random.uniform(0, delay))
            delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")


def open_channel(connection: Connection) -> grpc.Channel:
    """A channel secured as the connection says: TLS against its CA, a client certificate for mutual TLS,
    the token as `authorization: Bearer` on every call; plaintext when none is given."""
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        # our own loop retries; the channel's would multiply the attempts
        ("grpc.enable_retries", 0),
    ]
    if not connection.secure:
        return grpc.insecure_channel(connection.address, options=options)
    if connection.server_name:
        options.append(("grpc.ssl_target_name_override", connection.server_name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=connection.ca.read_bytes() if connection.ca else None,
        private_key=connection.key.read_bytes() if connection.key else None,
        certificate_chain=connection.cert.read_bytes() if connection.cert else None,
    )
    if connection.token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(connection.token)
        )
    return grpc.secure_channel(connection.address, credentials, options=options)
