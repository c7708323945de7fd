"""The one place where platform errors become gRPC statuses."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable

import grpc

from mlops.errors import MlopsError
from mlops.outages import is_outage
from mlops.telemetry import current_trace_id

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 2048
"""A status message travels in a trailer, percent-encoded, under gRPC's 16 KiB limit on metadata; a
message quoting a huge input (a 900 KB name) would be refused whole on the way and reach the client
as RESOURCE_EXHAUSTED, which reads as an overload to retry instead of the caller's mistake."""


def bounded(message: str) -> str:
    """`message`, cut to at most MAX_MESSAGE_BYTES of UTF-8, saying how much was cut."""
    raw = message.encode()
    if len(raw) <= MAX_MESSAGE_BYTES:
        return message
    kept = raw[: MAX_MESSAGE_BYTES - 40].decode(errors="ignore")
    return f"{kept}… ({len(raw) - len(kept.encode())} bytes cut)"


def status_for(error: Exception, method: str, trace_id: str | None) -> tuple[grpc.StatusCode, str]:
    """The status and message a call that failed with `error` answers: a platform error its own, an
    outage of a dependency UNAVAILABLE (clients retry it), anything else INTERNAL with the trace id,
    its traceback logged here and never sent."""
    if isinstance(error, MlopsError):
        return error.grpc_code, bounded(error.message)
    if is_outage(error):
        log.warning("%s: a dependency is unavailable: %s", method, error)
        return grpc.StatusCode.UNAVAILABLE, f"a dependency of {method} is unavailable; retry shortly"
    log.error("unexpected error in %s (trace %s)", method, trace_id, exc_info=error)
    where = f" (trace {trace_id})" if trace_id else ""
    return grpc.StatusCode.INTERNAL, f"internal error in {method}{where}; the server logged it"


async def _abort_for(error: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    await context.abort(*status_for(error, method, current_trace_id()))


def _wrap_unary(behavior: Callable[..., Awaitable], method: str) -> Callable[..., Awaitable]:
    async def wrapped(request, context):
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort_for(error, context, method)

    return wrapped


def _wrap_stream(behavior: Callable, method: str) -> Callable:
    async def wrapped(request, context):
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort_for(error, context, method)

    return wrapped


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns `MlopsError` into its status with the error's message, anything else into INTERNAL.

    A client never sees a traceback; the server logs it with the trace id that the message names.
    """

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary and inspect.iscoroutinefunction(handler.unary_unary):
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary and inspect.iscoroutinefunction(handler.stream_unary):
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream and inspect.isasyncgenfunction(handler.stream_stream):
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
