"""The server side of trust: every call names its principal and is checked against the access table.

The principal comes from a bearer token (`authorization: Bearer <token>`) when the call carries one,
else from the client certificate that mutual TLS verified. A token wins over a certificate so that a
service can act for the person whose token it forwards, with that person's rights. Handlers read the
result with `mlops.identity.current_principal()`.
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import grpc

from mlops.errors import InvalidArgument
from mlops.grpc.access import is_open, refusal, short_name
from mlops.identity import Principal, Role, TokenBook, acting_as, bearer_token, principal_from_certificate

log = logging.getLogger(__name__)

NO_CREDENTIALS = (
    "no client certificate or bearer token: send `authorization: Bearer <token>` (MLOPS_GRPC_CLIENT_TOKEN, "
    "or `mlops context use` a context that holds one) or, on a mutual-TLS port, a client certificate"
)
UNKNOWN_TOKEN = (
    "the bearer token is not known to this server: check MLOPS_GRPC_CLIENT_TOKEN "
    "(or the current context's, `mlops context show`)"
)
MAX_CACHED_CERTIFICATES = 1024
MAX_CACHED_DECISIONS = 16_384
"""(principal, method) pairs whose answer is kept; principals are bounded (the token file, the
certificate cache), methods are the server's own, so this only guards against a long-lived churn."""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED (no or unknown credentials) or PERMISSION_DENIED (the role is short),
    else runs the handler with the principal current. Health checks pass without credentials."""

    def __init__(
        self, *, tokens: TokenBook | None = None, cert_roles: Mapping[str, Role] | None = None
    ) -> None:
        self.tokens = tokens
        self.cert_roles = dict(cert_roles or {})
        # parsing a certificate per call would cost more than most handlers; bounded, as clients choose them
        self._certificates: OrderedDict[bytes, Principal | str] = OrderedDict()
        # per call, only the lookups: the guarded handler per method and the answer per (caller, method)
        # are made once (a hot path such as inference pays ~60 µs less a call than rebuilding them)
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._decisions: dict[tuple[Principal, str], str | None] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_open(method):
            return handler
        # only methods the server serves get here (an unknown name has no handler): the map is bounded
        known = self._handlers.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        guarded = self._guarded(handler, method)
        self._handlers[method] = (handler, guarded)
        return guarded

    def _principal(self, context: grpc.aio.ServicerContext) -> Principal | str:
        """The caller, or the reason (for a person) why no principal could be established."""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                token = bearer_token(value if isinstance(value, str) else value.decode("latin-1"))
                found = self.tokens.principal(token) if (token and self.tokens) else None
                return found or UNKNOWN_TOKEN
        pems = (context.auth_context() or {}).get("x509_pem_cert")
        if not pems:
            return NO_CREDENTIALS
        return self._certificate_principal(pems[0])

    def _certificate_principal(self, pem: bytes) -> Principal | str:
        cached = self._certificates.get(pem)
        if cached is not None:
            self._certificates.move_to_end(pem)
            return cached
        try:
            found: Principal | str = principal_from_certificate(pem, roles=self.cert_roles)
        except InvalidArgument as error:
            found = error.message
        self._certificates[pem] = found
        if len(self._certificates) > MAX_CACHED_CERTIFICATES:
            self._certificates.popitem(last=False)
        return found

    async def _admit(self, context: grpc.aio.ServicerContext, method: str) -> Principal:
        found = self._principal(context)
        if isinstance(found, str):
            log.info("refused %s from %s: %s", short_name(method), context.peer(), found)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, found)
        key = (found, method)
        try:
            why = self._decisions[key]  # type: ignore[index]
        except KeyError:
            why = refusal(found, method)  # type: ignore[arg-type]
            if len(self._decisions) >= MAX_CACHED_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = why  # type: ignore[index]
        if why is not None:
            log.warning("denied: %s", why)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        return found  # type: ignore[return-value]

    def _guarded(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        admit = self._admit

        def unary(behavior: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
            async def wrapped(request, context):
                with acting_as(await admit(context, method)):
                    return await behavior(request, context)

            return wrapped

        def stream(behavior: Callable[..., AsyncIterator]) -> Callable[..., AsyncIterator]:
            async def wrapped(request, context):
                with acting_as(await admit(context, method)):
                    async for response in behavior(request, context):
                        yield response

            return wrapped

        kinds = {
            "unary_unary": (grpc.unary_unary_rpc_method_handler, unary, inspect.iscoroutinefunction),
            "stream_unary": (grpc.stream_unary_rpc_method_handler, unary, inspect.iscoroutinefunction),
            "unary_stream": (grpc.unary_stream_rpc_method_handler, stream, inspect.isasyncgenfunction),
            "stream_stream": (grpc.stream_stream_rpc_method_handler, stream, inspect.isasyncgenfunction),
        }
        for kind, (make, wrap, is_async) in kinds.items():
            behavior = getattr(handler, kind)
            if behavior is None:
                continue
            if not is_async(behavior):
                # a synchronous handler runs in a thread where the check could not abort; refuse it loudly
                raise TypeError(
                    f"{short_name(method)} has a synchronous handler; the secured server needs async ones"
                )
            return make(
                wrap(behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
