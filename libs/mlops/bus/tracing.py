"""OpenTelemetry messaging conventions for Kafka: PRODUCER `publish <topic>`, CONSUMER `process <topic>`.

Trace context travels on every record as W3C `traceparent` / `tracestate` headers (DESIGN: Events),
read and written by the rules of `mlops.tracecontext` (which also says why not through the global
composite propagator).
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, StaticSampler
from opentelemetry.trace import NonRecordingSpan, ProxyTracerProvider, SpanContext, SpanKind, TraceFlags

from mlops.tracecontext import EMPTY_CONTEXT, FAST_W3C, TRACE_HEADERS, parse_traceparent, trace_headers

tracer = trace.get_tracer("mlops.bus")
"""The API's proxy tracer; `start_span` below goes to the SDK tracer behind it directly."""


def extract(headers: Sequence[tuple[str, bytes | None]]) -> Context:
    """The producer's context from a record's W3C headers (an empty context when there are none)."""
    if not FAST_W3C:
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
        return EMPTY_CONTEXT
    return trace.set_span_in_context(NonRecordingSpan(span_context), EMPTY_CONTEXT)


def inject(headers: list[tuple[str, bytes]], span: trace.Span | None = None) -> list[tuple[str, bytes]]:
    """Headers without any previous trace context, plus that of `span` (default: the current one).

    Exactly one `traceparent` comes out, whatever came in.
    """
    kept = [(name, value) for name, value in headers if name not in TRACE_HEADERS]
    if not FAST_W3C:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span) if span is not None else None)
        kept.extend((name, value.encode()) for name, value in carrier.items() if name in TRACE_HEADERS)
        return kept
    kept.extend(trace_headers((span or trace.get_current_span()).get_span_context()))
    return kept


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
