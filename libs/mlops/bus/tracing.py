"""OpenTelemetry messaging conventions for Kafka: PRODUCER `publish <topic>`, CONSUMER `process <topic>`."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context

tracer = trace.get_tracer("mlops.bus")

TRACE_HEADERS = ("traceparent", "tracestate")


def extract(headers: Sequence[tuple[str, bytes | None]]) -> Context:
    """The producer's context from a record's W3C headers (an empty context when there are none)."""
    carrier = {name: (value or b"").decode("latin-1") for name, value in headers if name in TRACE_HEADERS}
    return propagate.extract(carrier)


def context_from_text(carrier: dict[str, str]) -> Context:
    return propagate.extract({k: v for k, v in carrier.items() if k in TRACE_HEADERS})


def inject(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Headers without any previous trace context, plus the current one (exactly one traceparent)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    kept = [(name, value) for name, value in headers if name not in TRACE_HEADERS]
    kept.extend((name, value.encode()) for name, value in carrier.items() if name in TRACE_HEADERS)
    return kept


def current_traceparent() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: v for k, v in carrier.items() if k in TRACE_HEADERS}
