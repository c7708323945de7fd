"""gRPC `inference.GRPCInferenceService` (Open Inference Protocol, KServe V2): converts, calls the core.

The server runs without the generic gRPC interceptors (see `app.py`): on a path where a request
costs a few hundred microseconds, they were the largest cost after gRPC itself. This servicer does
their two jobs: every call is a SERVER span that continues the client's `traceparent` from the
call's metadata (unsampled spans take the bus's cheap path), tagged `mlops.model.name` and
`mlops.model.version`; and a failure becomes its status by the platform's one mapping
(`mlops.grpc.errors.status_for`: a platform error its own, an outage UNAVAILABLE, anything else
INTERNAL with the trace id in the message and the traceback in the log).
"""

from __future__ import annotations

import asyncio
import functools
import time

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc
from mlops.bus.tracing import start_span
from mlops.errors import InvalidArgument, MlopsError
from mlops.grpc.errors import bounded, status_for
from mlops.tracecontext import context_from_text
from services.inference import codec, prometheus
from services.inference.core import InferenceCore

SERVICE_NAME = "inference.GRPCInferenceService"
_TRACE_KEYS = ("traceparent", "tracestate")
STREAM_WINDOW = 64
"""Requests of one ModelStreamInfer call served at once; reading the stream waits beyond it."""


def _server_span(method: str, context: grpc.aio.ServicerContext) -> trace.Span:
    carrier = {key: value for key, value in context.invocation_metadata() or () if key in _TRACE_KEYS}
    parent = context_from_text(carrier) if carrier else None
    span = start_span(f"/{SERVICE_NAME}/{method}", parent, SpanKind.SERVER)
    if span.is_recording():
        span.set_attributes({"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": method})
    return span


def _status(span: trace.Span, method: str, error: Exception) -> tuple[grpc.StatusCode, str]:
    return status_for(error, method, format(span.get_span_context().trace_id, "032x"))


async def _abort(
    context: grpc.aio.ServicerContext, span: trace.Span, code: grpc.StatusCode, message: str
) -> None:
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.set_status(Status(StatusCode.ERROR, message))
    await context.abort(code, bounded(message))


class Refused(Exception):
    """An inference that failed: the status and message its caller is told."""

    def __init__(self, code: grpc.StatusCode, message: str, *, in_request: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.in_request = in_request
        """The request itself was refused (its inputs or size), before any model ran."""


def _refused(
    span: trace.Span, code: grpc.StatusCode, message: str, error: Exception, *, in_request: bool = False
) -> Refused:
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, message))
    return Refused(code, message, in_request=in_request or isinstance(error, InvalidArgument))


def _served(method):
    """Span and error mapping for the metadata calls (ModelInfer does both inline)."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self, request, context):
        span = _server_span(name, context)
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, span, *_status(span, name, error))
        finally:
            span.end()

    return wrapper


class InferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, core: InferenceCore, limits: codec.Limits, *, server_name: str, server_version: str
    ) -> None:
        self.core = core
        self.limits = limits
        self.server_name = server_name
        self.server_version = server_version

    def register(self, server) -> None:
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)

    @_served
    async def ServerLive(self, request, context):
        return oip.ServerLiveResponse(live=True)

    @_served
    async def ServerReady(self, request, context):
        return oip.ServerReadyResponse(ready=self.core.server_ready())

    @_served
    async def ServerMetadata(self, request, context):
        return oip.ServerMetadataResponse(name=self.server_name, version=self.server_version, extensions=[])

    @_served
    async def ModelReady(self, request, context):
        return oip.ModelReadyResponse(ready=self.core.is_ready(request.name, request.version))

    @_served
    async def ModelMetadata(self, request, context):
        return codec.model_metadata(*self.core.metadata(request.name, request.version))

    @_served
    async def RepositoryIndex(self, request, context):
        reply = oip.RepositoryIndexResponse()
        for name, version, role in self.core.repository_index():
            reply.models.add(name=name, version=version, state="READY", reason=role)
        return reply

    async def ModelInfer(self, request: oip.ModelInferRequest, context):
        arrived_ns = time.perf_counter_ns()
        span = _server_span("ModelInfer", context)
        try:
            return await self.infer(request, span, arrived_ns)
        except Refused as refused:
            if span.is_recording():
                span.set_attribute("rpc.grpc.status_code", refused.code.value[0])
            await context.abort(refused.code, bounded(refused.message))
        finally:
            span.end()

    async def ModelStreamInfer(self, request_iterator, context):
        """Each request answered in the order it came, on the same path as ModelInfer; a failed one is
        answered with `error_message` and the stream goes on. Requests read ahead are served
        concurrently (so pipelined requests share batches), at most `STREAM_WINDOW` at once."""
        pending: asyncio.Queue[asyncio.Future | None] = asyncio.Queue(STREAM_WINDOW)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    arrived_ns = time.perf_counter_ns()
                    await pending.put(asyncio.ensure_future(self._streamed(request, context, arrived_ns)))
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read(), name="ModelStreamInfer reader")
        try:
            while (answer := await pending.get()) is not None:
                yield await answer
            await reader  # a failed read (the client went away) ends the call with its error
        finally:
            reader.cancel()
            while not pending.empty():
                left = pending.get_nowait()
                if left is not None:
                    left.cancel()

    async def _streamed(self, request: oip.ModelInferRequest, context, arrived_ns: int):
        span = _server_span("ModelStreamInfer", context)
        try:
            return oip.ModelStreamInferResponse(infer_response=await self.infer(request, span, arrived_ns))
        except Refused as refused:
            if span.is_recording():
                span.set_attribute("rpc.grpc.status_code", refused.code.value[0])
            return oip.ModelStreamInferResponse(
                error_message=bounded(refused.message),
                infer_response=oip.ModelInferResponse(model_name=request.model_name, id=request.id),
            )
        finally:
            span.end()

    async def infer(
        self, request: oip.ModelInferRequest, span: trace.Span, arrived_ns: int, method: str = "ModelInfer"
    ) -> oip.ModelInferResponse:
        """One inference, whatever carried it (gRPC, its stream, REST): route, decode, predict, encode;
        counted, timed, logged and traced the same way. A failure is raised as `Refused`, its status
        and message chosen by the platform's one mapping and already marked on `span`."""
        model = request.model_name
        try:
            target = self.core.route(model, request.model_version)
        except MlopsError as error:
            code, message = _status(span, method, error)
            prometheus.REQUESTS.labels(self.core.metric_model(model), "", code.name).inc()
            raise _refused(span, code, message, error) from None
        serving = target.serving
        if span.is_recording():
            span.set_attributes({"mlops.model.name": model, "mlops.model.version": serving.version_text})
        counted, seconds = serving.metrics or self._children(serving)
        decoded = False
        try:
            rows = codec.decode_inputs(request, serving, self.limits)
            names = codec.requested_outputs(request, serving)
            decoded = True
            outputs = await self.core.predict(target, rows, request_id=request.id, arrived_ns=arrived_ns)
            response = codec.encode_response(request, serving, outputs, names)
        except Exception as error:
            if not isinstance(error, MlopsError) and isinstance(error, ValueError | TypeError):
                error = InvalidArgument(f"{type(error).__name__}: {error}")
            code, message = _status(span, method, error)
            # The inference log keeps what happened; the caller is told only the status's message.
            detail = error.message if isinstance(error, MlopsError) else f"{type(error).__name__}: {error}"
            prometheus.REQUESTS.labels(model, serving.version_text, code.name).inc()
            self.core.failed(
                target, request_id=request.id, arrived_ns=arrived_ns, error=f"{code.name}: {detail}"
            )
            raise _refused(span, code, message, error, in_request=not decoded) from None
        counted.inc()
        seconds.observe((time.perf_counter_ns() - arrived_ns) / 1e9)
        return response

    @staticmethod
    def _children(serving) -> tuple:
        """Kept on the version itself, so that they go when it leaves the routing table."""
        serving.metrics = (
            prometheus.REQUESTS.labels(serving.model, serving.version_text, "OK"),
            prometheus.REQUEST_SECONDS.labels(serving.model, serving.version_text),
        )
        return serving.metrics
