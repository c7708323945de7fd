"""W3C trace context as text: `traceparent` / `tracestate` parsed, written and carried across a queue.

A core that queues an event (`mlops.outbox`) keeps the current trace context with it, and one that
resumes work later continues the trace from what it kept; both need these helpers and no transport.
The Kafka side (record headers, PRODUCER / CONSUMER spans) is `mlops.bus.tracing`.

The two headers are read and written here directly instead of through the global composite
propagator: per record, the composite (tracecontext + baggage, a carrier dict, getter and setter
objects, a regex search) cost more than the rest of the envelope. The parsing rules are the ones of
`TraceContextTextMapPropagator`. Only when OTEL_PROPAGATORS leaves `tracecontext` out do these
helpers fall back to the configured global propagator (and still keep only the two W3C headers).
"""

from __future__ import annotations

import os
import re

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

TRACE_HEADERS = ("traceparent", "tracestate")

FAST_W3C = "tracecontext" in [
    name.strip() for name in os.environ.get("OTEL_PROPAGATORS", "tracecontext").split(",")
]
"""Whether the fast W3C path applies; read once, as the SDK reads OTEL_PROPAGATORS once at import."""

EMPTY_CONTEXT = Context()

_TRACEPARENT = re.compile(r"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*")
_MAX_TRACESTATE = 512  # characters, as in the W3C spec and the OpenTelemetry propagator


def parse_traceparent(traceparent: str | None, tracestate: list[str] | None = None) -> SpanContext | None:
    """The remote span context of a W3C `traceparent` (None when absent or invalid)."""
    if not traceparent:
        return None
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_int, span_int = int(trace_id, 16), int(span_id, 16)
    if not trace_int or not span_int:
        return None
    state = None
    if tracestate and sum(map(len, tracestate)) + len(tracestate) - 1 <= _MAX_TRACESTATE:
        state = TraceState.from_header(tracestate)
    return SpanContext(
        trace_int, span_int, is_remote=True, trace_flags=TraceFlags(int(flags, 16)), trace_state=state
    )


def context_from_text(carrier: dict[str, str]) -> Context:
    """The context a `{traceparent, tracestate}` mapping names (an empty context when it names none)."""
    if not FAST_W3C:
        return propagate.extract({k: v for k, v in carrier.items() if k in TRACE_HEADERS})
    state = carrier.get("tracestate")
    span_context = parse_traceparent(carrier.get("traceparent"), [state] if state else None)
    if span_context is None:
        return EMPTY_CONTEXT
    return trace.set_span_in_context(NonRecordingSpan(span_context), EMPTY_CONTEXT)


def trace_headers(span_context: SpanContext) -> list[tuple[str, bytes]]:
    """`traceparent` (and `tracestate` when there is one) of a span, as binary headers."""
    if not span_context.is_valid:
        return []
    headers = [
        (
            "traceparent",
            b"00-%032x-%016x-%02x" % (span_context.trace_id, span_context.span_id, span_context.trace_flags),
        )
    ]
    if span_context.trace_state:
        headers.append(("tracestate", span_context.trace_state.to_header().encode()))
    return headers


def current_traceparent() -> dict[str, str]:
    """The current span's `traceparent` (and `tracestate`), to keep with work that goes on later."""
    if not FAST_W3C:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return {k: v for k, v in carrier.items() if k in TRACE_HEADERS}
    return {
        name: value.decode() for name, value in trace_headers(trace.get_current_span().get_span_context())
    }
