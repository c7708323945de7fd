"""Client side: traced channels with retries on UNAVAILABLE, and typed errors from statuses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from mlops.errors import error_for_status

_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def open_channel(target: str, *, max_message_mb: int = 64) -> grpc.aio.Channel:
    """An insecure aio channel to a peer service (`<PEER>_ADDR`), traced and retried on UNAVAILABLE."""
    size = max_message_mb * 1024 * 1024
    return grpc.aio.insecure_channel(
        target,
        interceptors=aio_client_interceptors(),
        options=[
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            ("grpc.keepalive_time_ms", 30_000),
        ],
    )


@contextmanager
def raise_typed() -> Iterator[None]:
    """Re-raise a failed call as the platform error that the server raised (NotFound, InvalidArgument, …)."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise error_for_status(error.code(), error.details() or error.code().name) from error
