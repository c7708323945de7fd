"""gRPC `inference.GRPCInferenceService` (Open Inference Protocol, KServe V2): converts, calls the core.

The server runs without the generic gRPC interceptors (see `app.py`): on a path where a request
costs a few hundred microseconds, they were the largest cost after gRPC itself. This servicer does
their two jobs: every call is a SERVER span that continues the client's `traceparent` from the
call's metadata (unsampled spans take the bus's cheap path), tagged `mlops.model.name` and
`mlops.model.version`; and a platform error becomes its status with its message, anything else
INTERNAL with the trace id in the message and the traceback in the log.
"""

from __future__ import annotations

import functools
import logging
import time

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc
from mlops.bus.tracing import context_from_text, start_span
from mlops.errors import InvalidArgument, MlopsError, NotFound
from services.inference import codec, prometheus
from services.inference.core import InferenceCore

log = logging.getLogger(__name__)
SERVICE_NAME = "inference.GRPCInferenceService"
_TRACE_KEYS = ("traceparent", "tracestate")


def _server_span(method: str, context: grpc.aio.ServicerContext) -> trace.Span:
    carrier = {key: value for key, value in context.invocation_metadata() or () if key in _TRACE_KEYS}
    parent = context_from_text(carrier) if carrier else None
    span = start_span(f"/{SERVICE_NAME}/{method}", parent, SpanKind.SERVER)
    if span.is_recording():
        span.set_attributes({"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": method})
    return span


async def _abort(context: grpc.aio.ServicerContext, span: trace.Span, method: str, error: Exception) -> None:
    if isinstance(error, MlopsError):
        code, message = error.grpc_code, error.message
    else:
        trace_id = format(span.get_span_context().trace_id, "032x")
        log.error("unexpected error in %s (trace %s)", method, trace_id, exc_info=error)
        code, message = (
            grpc.StatusCode.INTERNAL,
            f"internal error in {method} (trace {trace_id}); the server logged it",
        )
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.set_status(Status(StatusCode.ERROR, message))
    await context.abort(code, message)


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
            await _abort(context, span, name, error)
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
        self.ready = False
        """Set by the composition root once the desired state has been read up to its end."""

    def register(self, server) -> None:
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)

    @_served
    async def ServerLive(self, request, context):
        return oip.ServerLiveResponse(live=True)

    @_served
    async def ServerReady(self, request, context):
        return oip.ServerReadyResponse(ready=self.ready and self.core.ready)

    @_served
    async def ServerMetadata(self, request, context):
        return oip.ServerMetadataResponse(name=self.server_name, version=self.server_version, extensions=[])

    @_served
    async def ModelReady(self, request, context):
        return oip.ModelReadyResponse(ready=self.core.is_ready(request.name, request.version))

    @_served
    async def ModelMetadata(self, request, context):
        routes = self.core.models.get(request.name)
        if routes is None:
            self.core.route(request.name)  # raises NotFound or Unavailable with the reason
            raise NotFound(f"model {request.name!r} is not served here")
        if request.version:
            serving = routes.by_version.get(request.version)
            if serving is None:
                raise NotFound(f"model {request.name!r} has no version {request.version!r} loaded")
        else:
            serving = routes.default
            if serving is None:
                self.core.route(request.name)
                raise NotFound(f"model {request.name!r} serves no version")
        versions = sorted(routes.by_version, key=lambda v: (len(v), v))
        return codec.model_metadata(serving, versions)

    @_served
    async def RepositoryIndex(self, request, context):
        reply = oip.RepositoryIndexResponse()
        for name, routes in sorted(self.core.models.items()):
            for version, serving in sorted(routes.by_version.items()):
                reply.models.add(name=name, version=version, state="READY", reason=serving.spec.role)
        return reply

    async def ModelInfer(self, request: oip.ModelInferRequest, context):
        arrived_ns = time.perf_counter_ns()
        span = _server_span("ModelInfer", context)
        model = request.model_name
        try:
            try:
                target = self.core.route(model, request.model_version)
            except MlopsError as error:
                prometheus.REQUESTS.labels(self.core.metric_model(model), "", error.grpc_code.name).inc()
                await _abort(context, span, "ModelInfer", error)
            serving = target.serving
            if span.is_recording():
                span.set_attributes({"mlops.model.name": model, "mlops.model.version": serving.version_text})
            counted, seconds = serving.metrics or self._children(serving)
            try:
                rows = codec.decode_inputs(request, serving, self.limits)
                names = codec.requested_outputs(request, serving)
                outputs = await self.core.predict(target, rows, request_id=request.id, arrived_ns=arrived_ns)
                response = codec.encode_response(request, serving, outputs, names)
            except Exception as error:
                if not isinstance(error, MlopsError) and isinstance(error, ValueError | TypeError):
                    error = InvalidArgument(f"{type(error).__name__}: {error}")
                code = error.grpc_code.name if isinstance(error, MlopsError) else "INTERNAL"
                message = (
                    error.message if isinstance(error, MlopsError) else f"{type(error).__name__}: {error}"
                )
                prometheus.REQUESTS.labels(model, serving.version_text, code).inc()
                self.core.failed(
                    target, request_id=request.id, arrived_ns=arrived_ns, error=f"{code}: {message}"
                )
                await _abort(context, span, "ModelInfer", error)
            counted.inc()
            seconds.observe((time.perf_counter_ns() - arrived_ns) / 1e9)
            return response
        finally:
            span.end()

    @staticmethod
    def _children(serving) -> tuple:
        """Kept on the version itself, so that they go when it leaves the routing table."""
        serving.metrics = (
            prometheus.REQUESTS.labels(serving.model, serving.version_text, "OK"),
            prometheus.REQUEST_SECONDS.labels(serving.model, serving.version_text),
        )
        return serving.metrics
