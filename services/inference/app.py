"""The inference server assembled from its parts, once: what `__main__` runs and the tests start in-process.

app = InferenceApp(InferenceSettings(), kafka=KafkaSettings(), bus=BusSettings(), store=open_store(...))
await app.start()        # gRPC (8001) and REST (8000) listening, desired state read and loaded, then SERVING
...
await app.stop()         # API first, then the reader, shadows, the logger (flushed), the pools
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

from mlops.bus import EventPublisher
from mlops.grpc import GrpcServer, open_channel
from mlops.identity import TokenBook
from mlops.lifecycle import stop_in_order
from mlops.settings import BusSettings, KafkaSettings
from mlops.store import ArtifactStore
from services.inference.codec import Limits
from services.inference.core import InferenceCore
from services.inference.desired import DesiredStateReader
from services.inference.inference_log import InferenceLogger
from services.inference.rest import RestApi, RestServer
from services.inference.runtime import OnnxRuntime
from services.inference.servicer import SERVICE_NAME, InferenceServicer
from services.inference.settings import InferenceSettings
from services.inference.signatures import RegistryVersions

log = logging.getLogger(__name__)
SOURCE = "mlops-inference"


def _version() -> str:
    try:
        return metadata.version("mlops-platform")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class InferenceApp:
    def __init__(
        self,
        settings: InferenceSettings,
        *,
        kafka: KafkaSettings,
        bus: BusSettings,
        store: ArtifactStore,
        log_kafka: KafkaSettings | None = None,
    ) -> None:
        """`log_kafka` sends the inference log elsewhere than the desired state (default: the same cluster)."""
        self.settings = settings
        self.kafka = kafka
        self.bus = bus
        self.executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="inference")
        self.logger: InferenceLogger | None = None
        if settings.log_enabled:
            self.logger = InferenceLogger(
                log_kafka or kafka,
                bus,
                source=SOURCE,
                server_id=settings.server_id,
                sampling_rate=settings.log_sampling_rate,
                batch_records=settings.log_batch_records,
                flush_interval_ms=settings.log_flush_interval_ms,
                queue_size=settings.log_queue_size,
                max_message_bytes=settings.log_max_message_bytes,
                publish_timeout_s=settings.log_publish_timeout_s,
            )
        uses_registry = settings.confirm_artifacts or settings.signatures_from_registry
        self.registry_channel = open_channel(settings.registry_addr) if uses_registry else None
        versions = (
            RegistryVersions(
                self.registry_channel,
                timeout_s=settings.registry_timeout_s,
                confirm=settings.confirm_artifacts,
                categories=settings.signatures_from_registry,
                max_cached=settings.registry_cache_size,
            )
            if self.registry_channel is not None
            else None
        )
        runtime = OnnxRuntime(
            provider=settings.execution_provider,
            threads=settings.onnx_threads,
            warmup_runs=settings.warmup_runs,
        )
        core_options = {"confirm_version": versions.confirmed} if versions is not None else {}
        self.core = InferenceCore(
            runtime=runtime,
            read_artifact=store.get_bytes,
            executor=self.executor,
            prediction_log=self.logger,
            retry_s=settings.desired_state_retry_s,
            inline_below_us=settings.inline_run_us,
            max_queued_requests=settings.max_queued_requests,
            max_shadow_calls=settings.max_shadow_calls,
            **core_options,
        )
        self.core.readiness_listener = self._readiness_changed
        self._health_changed = asyncio.Event()
        self._readiness_task: asyncio.Task | None = None
        self.servicer = InferenceServicer(
            self.core,
            Limits(max_rows=settings.max_request_rows, max_bytes=settings.max_request_bytes),
            server_name=SOURCE,
            server_version=_version(),
        )
        # No generic interceptors: the servicer traces its calls and maps its errors itself (hot path).
        grpc_settings = settings.grpc_server()
        self.server = GrpcServer(grpc_settings, instrumented=False)
        self.server.add(self.servicer.register, SERVICE_NAME)
        self.rest: RestServer | None = None
        if settings.http_port is not None:
            # REST is secured as gRPC is: its certificate, and the bearer tokens it accepts
            tokens = (
                TokenBook.load(grpc_settings.token_file)
                if grpc_settings.auth and grpc_settings.token_file
                else None
            )
            api = RestApi(
                self.servicer,
                auth=grpc_settings.auth,
                tokens=tokens,
                max_body_bytes=settings.http_max_body_bytes,
            )
            self.rest = RestServer(
                api,
                host=settings.grpc_host,
                port=settings.http_port,
                certfile=grpc_settings.tls_cert,
                keyfile=grpc_settings.tls_key,
            )
        self.publisher = EventPublisher(kafka, bus, source=SOURCE)
        self.reader = DesiredStateReader(
            kafka,
            bus,
            self.core,
            publisher=self.publisher,
            client_id=f"{settings.consumer_group}-{settings.server_id}",
        )
        self.tasks: list[asyncio.Task] = []
        self.port: int | None = None
        self.http_port: int | None = None
        """The REST port once listening (None without REST)."""

    async def start(self, *, ready_timeout_s: float | None = None) -> int:
        """Listen, read the desired state to its end (loading what it names), then report SERVING."""
        await self.publisher.start()
        await self.reader.start()
        self.port = await self.server.start()
        if self.rest is not None:
            self.http_port = await self.rest.start()
        self.tasks.append(asyncio.create_task(self.reader.run(), name="desired state"))
        if self.logger is not None:
            self.tasks.append(asyncio.create_task(self.logger.run(), name="inference log"))
        await self.reader.wait_caught_up(ready_timeout_s)
        self.core.caught_up()
        await self.server.set_serving(self.core.ready)
        self._readiness_task = asyncio.create_task(self._follow_readiness(), name="readiness")
        self.tasks.append(self._readiness_task)
        rest = (
            f", REST on {self.http_port}{' (TLS)' if self.rest and self.rest.tls else ''}"
            if self.rest
            else ""
        )
        if self.core.ready:
            log.info("inference ready: gRPC on %s:%d%s", self.settings.grpc_host, self.port, rest)
        else:
            log.warning(
                "inference listening on %s:%d%s but not ready: %s",
                self.settings.grpc_host,
                self.port,
                rest,
                self.core.not_ready(),
            )
        return self.port

    def _readiness_changed(self, ready: bool) -> None:
        self._health_changed.set()

    async def _follow_readiness(self) -> None:
        """gRPC health follows the core's readiness: NOT_SERVING while a model the desired state names
        answers nothing. One task sets it, always to the latest value, so updates cannot reorder."""
        while True:
            await self._health_changed.wait()
            self._health_changed.clear()
            await self.server.set_serving(self.core.ready)

    async def stop(self) -> None:
        if self._readiness_task is not None:
            self._readiness_task.cancel()  # health goes NOT_SERVING with the server's stop
        steps = []
        if self.rest is not None:
            steps.append(("REST server", self.rest.stop))
        steps += [
            ("gRPC server", self.server.stop),
            ("desired state reader", self.reader.stop),
            ("shadow calls", self.core.drain),
        ]
        if self.logger is not None:
            steps.append(("inference log", self.logger.stop))
        steps += [
            ("background tasks", lambda: asyncio.gather(*self.tasks, return_exceptions=True)),
            ("dead-letter publisher", self.publisher.stop),
        ]
        if self.logger is not None:
            steps.append(("inference log producer", self.logger.close))
        if self.registry_channel is not None:
            steps.append(("registry channel", self.registry_channel.close))
        steps.append(("inference threads", lambda: asyncio.to_thread(self.executor.shutdown)))
        await stop_in_order(steps)
