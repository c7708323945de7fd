"""OpenTelemetry messaging conventions for Kafka: PRODUCER `publish <topic>`, CONSUMER `process <topic>`.

Trace context travels on every record as W3C `traceparent` / `tracestate` headers (DESIGN: Events).
The bus reads and writes those two headers itself instead of going through the global composite
propagator: per record, the composite (tracecontext + baggage, a carrier dict, getter and setter
objects, a regex search) cost more than the rest of the envelope. The parsing rules are the ones of
`TraceContextTextMapPropagator`. Only when OTEL_PROPAGATORS leaves `tracecontext` out does the bus
fall back to the configured global propagator (and still keeps only the two W3C headers).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, StaticSampler
from opentelemetry.trace import (
    NonRecordingSpan,
    ProxyTracerProvider,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)

tracer = trace.get_tracer("mlops.bus")
"""The API's proxy tracer; `start_span` below goes to the SDK tracer behind it directly."""

TRACE_HEADERS = ("traceparent", "tracestate")

_W3C = "tracecontext" in [
    name.strip() for name in os.environ.get("OTEL_PROPAGATORS", "tracecontext").split(",")
]
"""Whether the fast W3C path applies; read once, as the SDK reads OTEL_PROPAGATORS once at import."""

_TRACEPARENT = re.compile(r"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*")
_EMPTY = Context()
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


def extract(headers: Sequence[tuple[str, bytes | None]]) -> Context:
    """The producer's context from a record's W3C headers (an empty context when there are none)."""
    if not _W3C:
        carrier = {name: (value or b"").decode("latin-1") for name, value in headers if name in TRACE_HEADERS}
        return propagate.extract(carrier)
    traceparent = None
    tracestate: list[str] | None = None
    for name, value in headers:
        if name == "traceparent":
            traceparent = (value or b"").decode("latin-1")  # the last one wins, as with a carrier dict
        elif name == "tracestate" and value:
            tracestate = [value.decode("latin-1")]
    span_context = parse_traceparent(traceparent, tracestate)
    if span_context is None:
        return _EMPTY
    return trace.set_span_in_context(NonRecordingSpan(span_context), _EMPTY)


def context_from_text(carrier: dict[str, str]) -> Context:
    if not _W3C:
        return propagate.extract({k: v for k, v in carrier.items() if k in TRACE_HEADERS})
    state = carrier.get("tracestate")
    span_context = parse_traceparent(carrier.get("traceparent"), [state] if state else None)
    if span_context is None:
        return _EMPTY
    return trace.set_span_in_context(NonRecordingSpan(span_context), _EMPTY)


def trace_headers(span_context: SpanContext) -> list[tuple[str, bytes]]:
    """`traceparent` (and `tracestate` when there is one) of a span, as Kafka headers."""
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


def inject(headers: list[tuple[str, bytes]], span: trace.Span | None = None) -> list[tuple[str, bytes]]:
    """Headers without any previous trace context, plus that of `span` (default: the current one).

    Exactly one `traceparent` comes out, whatever came in.
    """
    kept = [(name, value) for name, value in headers if name not in TRACE_HEADERS]
    if not _W3C:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span) if span is not None else None)
        kept.extend((name, value.encode()) for name, value in carrier.items() if name in TRACE_HEADERS)
        return kept
    kept.extend(trace_headers((span or trace.get_current_span()).get_span_context()))
    return kept


def current_traceparent() -> dict[str, str]:
    if not _W3C:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return {k: v for k, v in carrier.items() if k in TRACE_HEADERS}
    return {
        name: value.decode() for name, value in trace_headers(trace.get_current_span().get_span_context())
    }


# --- Spans -------------------------------------------------------------------------------------
#
# With parent-based sampling (the default, and what OTEL_TRACES_SAMPLER=parentbased_* gives), a
# span whose parent is not sampled is decided before it starts: the SDK returns a NonRecordingSpan
# with a fresh span id, the parent's trace id and trace state, and the sampled flag off. At a 1%
# sampling ratio that is 99% of the records, and the SDK's way to it (sampler objects, a
# SamplingResult, a tracer-metrics hook) was the largest cost of the bus per record. `start_span`
# builds that very span itself, but only when the installed SDK is configured so that the result is
# certain; anything else (another sampler, a disabled tracer, SDK self-metrics, a sampled or absent
# parent) goes through the SDK's `start_span` as before.

_resolved: tuple[object, trace.Tracer, IdGenerator | None] | None = None
"""(tracer provider, its tracer for the bus, id generator when unsampled children may skip the SDK)."""


def _drops_unsampled_children(sdk_tracer: SdkTracer) -> bool:
    sampler = getattr(sdk_tracer, "sampler", None)
    if not isinstance(sampler, ParentBased):
        return False
    delegates = (
        getattr(sampler, "_remote_parent_not_sampled", None),
        getattr(sampler, "_local_parent_not_sampled", None),
    )
    return (
        all(
            isinstance(d, StaticSampler) and getattr(d, "_decision", None) is Decision.DROP for d in delegates
        )
        and sdk_tracer._is_enabled()
        and isinstance(getattr(sdk_tracer, "_tracer_metrics", None), NoOpTracerMetrics)
    )


def _resolve() -> tuple[trace.Tracer, IdGenerator | None]:
    global _resolved
    provider = trace.get_tracer_provider()
    if _resolved is not None and _resolved[0] is provider:
        return _resolved[1], _resolved[2]
    if isinstance(provider, ProxyTracerProvider):  # not set up yet: ask again next time
        return tracer, None
    real = provider.get_tracer("mlops.bus")
    ids = real.id_generator if isinstance(real, SdkTracer) and _drops_unsampled_children(real) else None
    _resolved = (provider, real, ids)
    return real, ids


def start_span(name: str, context: Context | None, kind: SpanKind) -> trace.Span:
    """Start a span (not made current), exactly as `tracer.start_span(name, context, kind)` would."""
    real, ids = _resolve()
    if ids is not None:
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid and not parent.trace_flags.sampled:
            flags = TraceFlags.RANDOM_TRACE_ID if parent.trace_flags.random_trace_id else TraceFlags.DEFAULT
            return NonRecordingSpan(
                SpanContext(
                    parent.trace_id,
                    ids.generate_span_id(),
                    is_remote=False,
                    trace_flags=TraceFlags(flags),
                    trace_state=parent.trace_state,
                )
            )
    return real.start_span(name, context=context, kind=kind)
