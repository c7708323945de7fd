"""Open Inference Protocol over HTTP/REST (KServe V2), served beside gRPC in the same event loop.

A raw ASGI application under uvicorn (httptools): per request only a split of the path, one pass
over the headers, the body read, and the conversion to and from the gRPC messages
(`rest_codec`); inference itself goes through `InferenceServicer.infer`, the path gRPC and its
stream take, so routing, batching, the inference log, metrics, spans and error messages are the
same. Endpoints:

    GET  /v2/health/live | /v2/health/ready                  open, as gRPC health is
    GET  /v2                                                 ServerMetadata
    GET  /v2/models/{name}[/versions/{v}]                    ModelMetadata
    GET  /v2/models/{name}[/versions/{v}]/ready              ModelReady
    POST /v2/models/{name}[/versions/{v}]/infer              ModelInfer (JSON or binary tensors)
    POST /v2/repository/index                                RepositoryIndex

Security follows the gRPC server's settings (`MLOPS_GRPC_*`): TLS with its certificate and key when
it speaks TLS, and with `auth` every call but health needs `Authorization: Bearer <token>` from its
token file, checked against the access table under the equivalent gRPC method
(`/inference.GRPCInferenceService/ModelInfer`, ...). Errors are `{"error": "..."}`: 400 bad input,
401 no or unknown token, 403 a role short, 404 unknown model, version or endpoint, 413 too large,
429 queue full, 503 not ready or unavailable, 500 anything else (its trace id in the message).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from pathlib import Path

import grpc
import uvicorn
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from inference import grpc_service_pb2 as oip
from mlops.bus.tracing import start_span
from mlops.errors import MlopsError
from mlops.grpc.access import refusal
from mlops.grpc.auth import UNKNOWN_TOKEN
from mlops.grpc.errors import bounded, status_for
from mlops.identity import Principal, TokenBook, acting_as, bearer_token
from mlops.tracecontext import context_from_text
from services.inference import codec, prometheus, rest_codec
from services.inference.servicer import SERVICE_NAME, InferenceServicer, Refused

log = logging.getLogger(__name__)

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
NO_TOKEN = (
    "no bearer token: send `Authorization: Bearer <token>` (a token of this server's MLOPS_GRPC_TOKEN_FILE)"
)
MAX_CACHED_DECISIONS = 16_384
JSON = b"application/json"
_WANTED = frozenset(
    (
        b"authorization",
        b"content-length",
        b"content-encoding",
        rest_codec.HEADER_LENGTH.encode(),
        b"traceparent",
        b"tracestate",
    )
)


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: tuple = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class RestApi:
    """The ASGI application. `tokens`: the bearer tokens accepted when `auth` is on (None: none are)."""

    def __init__(
        self, servicer: InferenceServicer, *, auth: bool, tokens: TokenBook | None, max_body_bytes: int
    ) -> None:
        self.servicer = servicer
        self.core = servicer.core
        self.auth = auth
        self.tokens = tokens
        self.max_body_bytes = max_body_bytes
        self._decisions: dict[tuple[Principal, str], str | None] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        headers = {key: value for key, value in scope["headers"] if key in _WANTED}
        try:
            status, body, extra = await self._dispatch(scope, headers, receive)
        except HttpError as error:
            status, body, extra = error.status, rest_codec.dumps({"error": error.message}), error.headers
        response_headers = [(b"content-length", str(len(body)).encode()), *extra]
        if not any(key == b"content-type" for key, _ in extra):
            response_headers.append((b"content-type", JSON))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})

    # --- routing -----------------------------------------------------------------------------------

    async def _dispatch(self, scope, headers: dict, receive) -> tuple[int, bytes, tuple]:
        parts = scope["path"].strip("/").split("/")
        verb = scope["method"]
        if parts[0] != "v2":
            raise HttpError(404, f"no endpoint {scope['path']}: the Open Inference Protocol is under /v2")
        rest = parts[1:]
        if not rest:
            return self._answer("ServerMetadata", verb, "GET", headers, self._server_metadata)
        head = rest[0]
        if head == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
            _allow(verb, "GET")
            if rest[1] == "live":
                return 200, b'{"live":true}', ()
            ready = self.core.server_ready()
            return (200 if ready else 503), rest_codec.dumps({"ready": ready}), ()
        if head == "repository" and rest[1:] == ["index"]:
            return self._answer("RepositoryIndex", verb, "POST", headers, self._repository_index)
        if head == "models" and len(rest) >= 2:
            name, tail, version = rest[1], rest[2:], ""
            if tail[:1] == ["versions"] and len(tail) >= 2:
                version, tail = tail[1], tail[2:]
            if not tail:
                return self._answer(
                    "ModelMetadata", verb, "GET", headers, self._model_metadata, name, version
                )
            if tail == ["ready"]:
                return self._answer("ModelReady", verb, "GET", headers, self._model_ready, name, version)
            if tail == ["infer"]:
                _allow(verb, "POST")
                principal = self._admit(headers, "ModelInfer")
                body = await self._body(headers, receive)
                with acting_as(principal):
                    return await self._infer(headers, body, name, version)
        raise HttpError(404, f"no endpoint {verb} {scope['path']}")

    def _answer(self, method: str, verb: str, allowed: str, headers: dict, handler, *args):
        _allow(verb, allowed)
        principal = self._admit(headers, method)
        span = self._span(method, headers)
        try:
            with acting_as(principal):
                return handler(*args)
        except MlopsError as error:
            code, message = status_for(error, method, format(span.get_span_context().trace_id, "032x"))
            raise HttpError(HTTP_STATUS.get(code, 500), bounded(message)) from None
        finally:
            span.end()

    # --- security ----------------------------------------------------------------------------------

    def _admit(self, headers: dict, method: str) -> Principal | None:
        if not self.auth:
            return None
        value = headers.get(b"authorization")
        if value is None:
            raise HttpError(401, NO_TOKEN, ((b"www-authenticate", b"Bearer"),))
        token = bearer_token(value.decode("latin-1"))
        principal = self.tokens.principal(token) if (token and self.tokens) else None
        if principal is None:
            raise HttpError(401, UNKNOWN_TOKEN, ((b"www-authenticate", b'Bearer error="invalid_token"'),))
        key = (principal, method)
        try:
            why = self._decisions[key]
        except KeyError:
            why = refusal(principal, f"/{SERVICE_NAME}/{method}")
            if len(self._decisions) >= MAX_CACHED_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = why
        if why is not None:
            log.warning("denied: %s", why)
            raise HttpError(403, why)
        return principal

    async def _body(self, headers: dict, receive) -> bytes:
        encoding = headers.get(b"content-encoding")
        if encoding not in (None, b"identity"):
            raise HttpError(
                415, f"Content-Encoding {encoding.decode('latin-1')!r} is not accepted; send the body as is"
            )
        declared = headers.get(b"content-length")
        limit = self.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, f"the body has {int(declared)} bytes; this server takes at most {limit}")
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body"):
            return body
        chunks, size = [body], len(body)
        while message.get("more_body"):
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"the body is larger than {limit} bytes, the most this server takes")
            chunks.append(chunk)
        return b"".join(chunks)

    # --- handlers ----------------------------------------------------------------------------------

    def _span(self, method: str, headers: dict) -> trace.Span:
        parent = None
        if b"traceparent" in headers:
            carrier = {"traceparent": headers[b"traceparent"].decode("latin-1")}
            if b"tracestate" in headers:
                carrier["tracestate"] = headers[b"tracestate"].decode("latin-1")
            parent = context_from_text(carrier)
        span = start_span(f"/{SERVICE_NAME}/{method}", parent, SpanKind.SERVER)
        if span.is_recording():
            span.set_attributes({"rpc.system": "oip-http", "rpc.service": SERVICE_NAME, "rpc.method": method})
        return span

    def _server_metadata(self) -> tuple[int, bytes, tuple]:
        servicer = self.servicer
        message = oip.ServerMetadataResponse(name=servicer.server_name, version=servicer.server_version)
        return 200, rest_codec.server_metadata(message), ()

    def _repository_index(self) -> tuple[int, bytes, tuple]:
        reply = oip.RepositoryIndexResponse()
        for model, version, role in self.core.repository_index():
            reply.models.add(name=model, version=version, state="READY", reason=role)
        return 200, rest_codec.repository_index(reply), ()

    def _model_metadata(self, name: str, version: str) -> tuple[int, bytes, tuple]:
        return 200, rest_codec.model_metadata(codec.model_metadata(*self.core.metadata(name, version))), ()

    def _model_ready(self, name: str, version: str) -> tuple[int, bytes, tuple]:
        self.core.metadata(name, version)  # unknown model or version: 404; loading: 503
        ready = self.core.is_ready(name, version)
        return (200 if ready else 503), rest_codec.dumps({"name": name, "ready": ready}), ()

    async def _infer(self, headers: dict, body: bytes, name: str, version: str) -> tuple[int, bytes, tuple]:
        arrived_ns = time.perf_counter_ns()
        span = self._span("ModelInfer", headers)
        try:
            header_length = headers.get(rest_codec.HEADER_LENGTH.encode())
            try:
                if header_length is not None and not header_length.isdigit():
                    raise rest_codec.BadRequest(
                        f"Inference-Header-Content-Length must be a byte count, not {header_length.decode('latin-1')!r}"
                    )
                length = int(header_length) if header_length is not None else None
                request, binary = rest_codec.infer_request(body, length, name, version)
            except rest_codec.BadRequest as error:
                prometheus.REQUESTS.labels(self.core.metric_model(name), "", "INVALID_ARGUMENT").inc()
                if span.is_recording():
                    span.set_status(Status(StatusCode.ERROR, str(error)))
                raise HttpError(400, bounded(str(error))) from None
            try:
                response = await self.servicer.infer(request, span, arrived_ns)
            except Refused as refused:
                status = (
                    413
                    if refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED and refused.in_request
                    else HTTP_STATUS.get(refused.code, 500)
                )
                raise HttpError(status, bounded(refused.message)) from None
            answer, length = rest_codec.infer_response(response, binary)
            if length is None:
                return 200, answer, ()
            return (
                200,
                answer,
                (
                    (b"content-type", b"application/octet-stream"),
                    (rest_codec.HEADER_LENGTH.encode(), str(length).encode()),
                ),
            )
        finally:
            span.end()


def _allow(verb: str, allowed: str) -> None:
    if verb != allowed:
        raise HttpError(405, f"{verb} is not allowed here; use {allowed}", ((b"allow", allowed.encode()),))


class RestServer:
    """uvicorn serving `app` inside the running event loop (no signal handlers of its own: the
    composition root owns those), over TLS when a certificate and key are given."""

    def __init__(
        self, app: RestApi, *, host: str, port: int, certfile: Path | None = None, keyfile: Path | None = None
    ) -> None:
        tls = {}
        if certfile is not None and keyfile is not None:
            tls = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile), "ssl_cert_reqs": ssl.CERT_NONE}
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http="httptools",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=5,
            **tls,
        )
        self.tls = bool(tls)
        self.server = uvicorn.Server(self.config)
        self._main: asyncio.Task | None = None
        self.port: int | None = None

    async def start(self) -> int:
        config = self.config
        if not config.loaded:
            config.load()
        self.server.lifespan = config.lifespan_class(config)
        try:
            await self.server.startup()
        except SystemExit:  # uvicorn's answer to a port it cannot bind
            raise OSError(
                f"cannot listen on {config.host}:{config.port}: the port is taken or the address is wrong"
            ) from None
        sockets = [sock for server in self.server.servers for sock in server.sockets]
        self.port = next(s.getsockname()[1] for s in sockets if s.family in (socket.AF_INET, socket.AF_INET6))
        self._main = asyncio.create_task(self.server.main_loop(), name="REST server")
        return self.port

    async def stop(self) -> None:
        if self._main is None:
            return
        self.server.should_exit = True
        await self._main
        await self.server.shutdown()
        self._main = None
