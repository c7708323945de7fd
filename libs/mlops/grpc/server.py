"""A grpc.aio server with the standard health service, reflection, OpenTelemetry, error mapping and,
when its settings say so, TLS (mutual TLS) and per-method authorisation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from mlops.grpc.auth import AuthInterceptor
from mlops.grpc.errors import ErrorInterceptor
from mlops.identity import Role, TokenBook
from mlops.settings import GrpcServerSettings

log = logging.getLogger(__name__)

Registration = Callable[[grpc.aio.Server], None]


class GrpcServer:
    """Builds the server once; `add(register, service_name)` per API, then `start()`.

    Health starts NOT_SERVING for every service and flips to SERVING when the composition root
    calls `set_serving()` (after migrations, consumers and caches are ready).
    """

    def __init__(
        self,
        settings: GrpcServerSettings,
        *,
        interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
        instrumented: bool = True,
    ) -> None:
        """`instrumented=False` leaves out the OpenTelemetry and error-mapping interceptors, for a server
        whose API traces its calls and maps its errors itself on a hot path (the inference server)."""
        self.settings = settings
        size = settings.max_message_mb * 1024 * 1024
        standard = [aio_server_interceptor(), ErrorInterceptor()] if instrumented else []
        # innermost, after tracing and error mapping: a refused call is still traced, and its status passes as is
        security = [_auth_interceptor(settings)] if settings.auth else []
        self.server = grpc.aio.server(
            interceptors=[*standard, *security, *interceptors],
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._names: list[str] = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        self.port: int | None = None
        self.token_port: int | None = None

    def add(self, register: Registration, service_name: str) -> None:
        register(self.server)
        self._names.append(service_name)

    async def start(self) -> int:
        reflection.enable_server_reflection([*self._names, reflection.SERVICE_NAME], self.server)
        address = f"{self.settings.host}:{self.settings.port}"
        credentials = _server_credentials(self.settings)
        self.port = self._listen(address, credentials)
        if self.settings.token_port is not None:
            self.token_port = self._listen(
                f"{self.settings.host}:{self.settings.token_port}",
                _server_credentials(self.settings, tokens=True),
            )
        await self.server.start()
        for name in ["", *self._names[1:]]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info(
            "gRPC listening on %s:%d (%s%s)%s",
            self.settings.host,
            self.port,
            "mutual TLS" if self.settings.tls_client_ca else "TLS" if self.settings.tls_cert else "plaintext",
            ", calls authorised" if self.settings.auth else "",
            f", and on {self.token_port} for token holders (TLS)" if self.token_port else "",
        )
        return self.port

    def _listen(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        try:
            if credentials is None:
                return self.server.add_insecure_port(address)
            return self.server.add_secure_port(address, credentials)
        except RuntimeError as error:
            raise OSError(f"cannot listen on {address}: the port is taken or the address is wrong") from error

    async def set_serving(self, serving: bool = True) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._names[1:]]:
            await self.health.set(name, status)

    async def stop(self) -> None:
        await self.set_serving(False)
        await self.server.stop(self.settings.shutdown_grace_s)

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def _auth_interceptor(settings: GrpcServerSettings) -> AuthInterceptor:
    tokens = TokenBook.load(settings.token_file) if settings.token_file else None
    return AuthInterceptor(
        tokens=tokens, cert_roles={name: Role(role) for name, role in settings.cert_roles.items()}
    )


def _server_credentials(
    settings: GrpcServerSettings, *, tokens: bool = False
) -> grpc.ServerCredentials | None:
    """The main port's credentials, or with `tokens` the token port's (TLS, no certificate asked)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    cert, key = settings.tls_cert.read_bytes(), settings.tls_key.read_bytes()
    _check_pair(cert, key, settings)
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca and not tokens else None
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _check_pair(cert_pem: bytes, key_pem: bytes, settings: GrpcServerSettings) -> None:
    # grpc would accept a mismatched pair here and fail every handshake later, with nothing in the log
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"MLOPS_GRPC_TLS_CERT {settings.tls_cert} and MLOPS_GRPC_TLS_KEY {settings.tls_key} "
            f"must be a PEM certificate and its unencrypted PEM key: {error}"
        ) from None
    if cert.public_key() != key.public_key():
        raise ValueError(
            f"MLOPS_GRPC_TLS_KEY {settings.tls_key} is not the key of MLOPS_GRPC_TLS_CERT {settings.tls_cert}"
        )
