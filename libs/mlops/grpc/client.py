"""Client side: traced channels with retries on UNAVAILABLE, TLS and credentials from settings, and
typed errors from statuses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from mlops.errors import error_for_status
from mlops.settings import GrpcClientSettings

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


def open_channel(
    target: str,
    *,
    max_message_mb: int = 64,
    security: GrpcClientSettings | None = None,
    traced: bool = True,
) -> grpc.aio.Channel:
    """An aio channel to a peer service (`<PEER>_ADDR`), traced and retried on UNAVAILABLE.

    Secured as `security` says (default: `MLOPS_GRPC_CLIENT_*` of this process, which the local stack
    and the CLI's context set): it verifies the server against `ca_file`, presents `cert_file` for
    mutual TLS and sends `token` as a bearer token on every call. All unset: plaintext.
    `traced=False` leaves out the client spans (a load generator's thousands of calls)."""
    security = GrpcClientSettings() if security is None else security
    options = _options(max_message_mb, security)
    interceptors = aio_client_interceptors() if traced else None
    if not security.secure:
        return grpc.aio.insecure_channel(target, interceptors=interceptors, options=options)
    return grpc.aio.secure_channel(
        target, channel_credentials(security), interceptors=interceptors, options=options
    )


def open_sync_channel(
    target: str, *, max_message_mb: int = 64, security: GrpcClientSettings | None = None
) -> grpc.Channel:
    """The same as `open_channel` for synchronous code (scripts, tests, the demo's checks), untraced."""
    security = GrpcClientSettings() if security is None else security
    options = _options(max_message_mb, security)
    if not security.secure:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, channel_credentials(security), options=options)


def _options(max_message_mb: int, security: GrpcClientSettings) -> list[tuple[str, object]]:
    size = max_message_mb * 1024 * 1024
    options: list[tuple[str, object]] = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.keepalive_time_ms", 30_000),
    ]
    if security.secure and security.server_name:
        options.append(("grpc.ssl_target_name_override", security.server_name))
    return options


def channel_credentials(security: GrpcClientSettings) -> grpc.ChannelCredentials:
    """TLS credentials (with the client certificate, if any), composed with the bearer token, if any."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=security.ca_file.read_bytes() if security.ca_file else None,
        private_key=security.key_file.read_bytes() if security.key_file else None,
        certificate_chain=security.cert_file.read_bytes() if security.cert_file else None,
    )
    if security.token is None:
        return credentials
    token = grpc.access_token_call_credentials(security.token.get_secret_value())
    return grpc.composite_channel_credentials(credentials, token)


@contextmanager
def raise_typed() -> Iterator[None]:
    """Re-raise a failed call as the platform error that the server raised (NotFound, InvalidArgument, …)."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise error_for_status(error.code(), error.details() or error.code().name) from error
