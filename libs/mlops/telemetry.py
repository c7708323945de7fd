"""Tracing and metrics set-up, the same for every service.

Tracing follows the standard OTEL_* variables (endpoint, sampler, resource attributes); this module
only adds the service name `mlops-<service>` and a switch to turn export off. Metrics are exposed in
Prometheus format on `MLOPS_TELEMETRY_METRICS_PORT`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import metadata

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import start_http_server

from mlops.settings import TelemetrySettings

log = logging.getLogger(__name__)

_provider: TracerProvider | None = None


def _version() -> str:
    try:
        return metadata.version("mlops-platform")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass
class Telemetry:
    """Handle returned by `setup_telemetry`; `shutdown()` flushes spans still buffered."""

    service_name: str
    provider: TracerProvider

    def shutdown(self) -> None:
        self.provider.force_flush(timeout_millis=5_000)
        self.provider.shutdown()


def setup_telemetry(service: str, settings: TelemetrySettings | None = None) -> Telemetry:
    """Install the process-wide tracer provider and, when configured, the metrics endpoint.

    `service` is the short name (`registry`); the OpenTelemetry service name becomes
    `mlops-registry` unless OTEL_SERVICE_NAME says otherwise. Safe to call more than once.
    """
    global _provider
    settings = settings or TelemetrySettings()
    name = os.environ.get("OTEL_SERVICE_NAME") or f"mlops-{service}"
    if _provider is None:
        resource = Resource.create(
            {SERVICE_NAME: name, SERVICE_VERSION: _version(), "service.namespace": "mlops"}
        )
        _provider = TracerProvider(resource=resource)
        if settings.tracing and os.environ.get("OTEL_TRACES_EXPORTER", "otlp") != "none":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            _provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(), max_queue_size=65_536, max_export_batch_size=2_048)
            )
        trace.set_tracer_provider(_provider)
        _instrument_clients()
        if settings.metrics_port is not None:
            start_http_server(settings.metrics_port, addr=settings.metrics_host)
            log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    return Telemetry(service_name=name, provider=_provider)


def _instrument_clients() -> None:
    """S3 (botocore) and PostgreSQL (asyncpg) calls become child spans of whatever is current."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

    BotocoreInstrumentor().instrument()
    AsyncPGInstrumentor().instrument()


def current_trace_id() -> str | None:
    """Hex trace id of the active span, for log lines and error messages a person can look up."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
