"""gRPC `inference.GRPCInferenceService` (Open Inference Protocol, KServe V2): converts, calls the core.

Each ModelInfer is one server span (the gRPC instrumentation continues a client's `traceparent`),
tagged `mlops.model.name` / `mlops.model.version`; failures raise platform errors, which the
server's error interceptor turns into their status with the message.
"""

from __future__ import annotations

import time

from opentelemetry import trace

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc
from mlops.bus.envelope import new_event_id
from mlops.errors import InvalidArgument, MlopsError, NotFound
from services.inference import codec, prometheus
from services.inference.core import InferenceCore

SERVICE_NAME = "inference.GRPCInferenceService"


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
        self._metrics: dict[tuple[str, str], tuple] = {}

    def register(self, server) -> None:
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)

    async def ServerLive(self, request, context):
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return oip.ServerReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request, context):
        return oip.ServerMetadataResponse(name=self.server_name, version=self.server_version, extensions=[])

    async def ModelReady(self, request, context):
        return oip.ModelReadyResponse(ready=self.core.is_ready(request.name, request.version))

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

    async def RepositoryIndex(self, request, context):
        reply = oip.RepositoryIndexResponse()
        for name, routes in sorted(self.core.models.items()):
            for version, serving in sorted(routes.by_version.items()):
                reply.models.add(name=name, version=version, state="READY", reason=serving.spec.role)
        return reply

    async def ModelInfer(self, request: oip.ModelInferRequest, context):
        arrived_ns = time.perf_counter_ns()
        model = request.model_name
        try:
            target = self.core.route(model, request.model_version)
        except MlopsError as error:
            prometheus.REQUESTS.labels(model, "", error.grpc_code.name).inc()
            raise
        serving = target.serving
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({"mlops.model.name": model, "mlops.model.version": serving.version_text})
        counted, seconds = self._children(model, serving.version_text)
        request_id = request.id or new_event_id()
        try:
            rows = codec.decode_inputs(request, serving, self.limits)
            names = codec.requested_outputs(request, serving)
            outputs = await self.core.predict(target, rows, request_id=request_id, arrived_ns=arrived_ns)
            response = codec.encode_response(request, serving, outputs, names)
        except Exception as error:
            code = error.grpc_code.name if isinstance(error, MlopsError) else "INTERNAL"
            message = error.message if isinstance(error, MlopsError) else f"{type(error).__name__}: {error}"
            prometheus.REQUESTS.labels(model, serving.version_text, code).inc()
            self.core.failed(target, request_id=request_id, arrived_ns=arrived_ns, error=f"{code}: {message}")
            if not isinstance(error, MlopsError) and isinstance(error, ValueError | TypeError):
                raise InvalidArgument(message) from error
            raise
        counted.inc()
        seconds.observe((time.perf_counter_ns() - arrived_ns) / 1e9)
        return response

    def _children(self, model: str, version: str) -> tuple:
        key = (model, version)
        children = self._metrics.get(key)
        if children is None:
            children = self._metrics[key] = (
                prometheus.REQUESTS.labels(model, version, "OK"),
                prometheus.REQUEST_SECONDS.labels(model, version),
            )
        return children
