"""`mlops trace NAME@VERSION`: the trace a model version was made in, read back from Jaeger's query
API and drawn as a tree: from the data commit (or the drift window that asked for a retrain) through
training, evaluation and rollout to the first predictions."""

from __future__ import annotations

import time
from typing import Annotated

import httpx
import typer

from mlops.cli.context import cli_context
from mlops.cli.models import model_ref
from mlops.errors import NotFound, Unavailable
from mlops.jaeger import TRACE_TAG, JaegerClient, SpanView, render_tree
from mlops.registry.v1 import registry_pb2

DEFAULT_JAEGER = "http://127.0.0.1:16686"
SETTLE_S = 3.0

HELP = """Draw the trace a model version was made in (services, spans, durations, errors, links).

The trace starts where the version's story starts: the data commit that trained it, or, for a
retrain, the monitor's drift window (shown as a link). SQL statements are left out unless --all.
"""


def trace(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION|@ALIAS]", help="The model version.")],
    jaeger_url: Annotated[
        str,
        typer.Option("--jaeger", envvar="MLOPS_JAEGER_QUERY_URL", metavar="URL", help="Jaeger's query API."),
    ] = DEFAULT_JAEGER,
    all_spans: Annotated[bool, typer.Option("--all", help="Keep SQL statements and every repeat.")] = False,
    wait: Annotated[
        float,
        typer.Option("--wait", min=0, metavar="SECONDS", help="Wait this long for spans still in flight."),
    ] = 0.0,
) -> None:
    cli = cli_context(ctx)
    target = model_ref(ref)

    async def work() -> registry_pb2.ModelVersion:
        async with cli.registry() as registry:
            request = registry_pb2.GetModelVersionRequest(model=target.name, **target.selector())
            return await cli.call(registry.GetModelVersion, request)

    version = cli.run("trace", work, model=target.name)
    trace_id = version.tags.get(TRACE_TAG, "")
    if not trace_id:
        raise NotFound(
            f"{version.model}@{version.version} has no `{TRACE_TAG}` tag: it was registered by hand, "
            "not by the trainer, so no trace is known for it"
        )
    jaeger = JaegerClient(jaeger_url)
    try:
        spans = _fetch(jaeger, trace_id, wait)
        if cli.output.json_mode:
            cli.output.json(
                {
                    "model": version.model,
                    "version": version.version,
                    "traceId": trace_id,
                    "url": jaeger.ui_url(trace_id),
                    "spans": [_span_json(span) for span in spans],
                }
            )
            return
        if not spans:
            raise NotFound(
                f"Jaeger at {jaeger_url} has no spans of trace {trace_id} "
                "(expired, or the services do not export to it: check OTEL_EXPORTER_OTLP_ENDPOINT)"
            )
        shown = spans if all_spans else [span for span in spans if not span.is_sql]
        services = sorted({span.service for span in spans})
        took = (max(s.end_ns for s in spans) - min(s.start_ns for s in spans)) / 1e9
        errors = sum(span.error for span in spans)
        cli.output.line(
            f"{version.model}@{version.version}: trace {trace_id}, {len(spans)} spans over {took:.1f} s "
            f"across {', '.join(services)}; {errors} with errors"
        )
        cli.output.line(render_tree(shown, repeats=0 if all_spans else 3))
        _print_links(cli, jaeger, spans)
        cli.output.line(f"Jaeger UI: {jaeger.ui_url(trace_id)}")
    finally:
        jaeger.close()


def _fetch(jaeger: JaegerClient, trace_id: str, wait_s: float) -> list[SpanView]:
    """The trace's spans; with `wait_s`, polled until no new span arrived for a while (services export
    in batches, seconds apart) or the wait is over."""
    deadline = time.monotonic() + wait_s
    spans: list[SpanView] = []
    settled_at = time.monotonic()
    while True:
        try:
            latest = jaeger.trace(trace_id)
        except httpx.HTTPError as error:
            raise Unavailable(f"Jaeger's query API at {jaeger.base_url} did not answer: {error}") from error
        if len(latest) != len(spans):
            spans, settled_at = latest, time.monotonic()
        now = time.monotonic()
        if now >= deadline or (spans and now - settled_at >= SETTLE_S):
            return spans
        time.sleep(0.5)


def _print_links(cli, jaeger: JaegerClient, spans: list[SpanView]) -> None:
    """Where the linked spans come from (e.g. the drift window behind a retrain), by name."""
    links = [(span, link) for span in spans for link in span.links]
    if not links:
        return
    cli.output.line("Links:")
    fetched: dict[str, list[SpanView]] = {}
    for span, (trace_id, span_id) in links:
        if trace_id not in fetched:
            try:
                fetched[trace_id] = jaeger.trace(trace_id)
            except httpx.HTTPError:
                fetched[trace_id] = []
        target = next((s for s in fetched[trace_id] if s.span_id == span_id), None)
        described = f"[{target.service}] {target.name}" if target else f"span {span_id} (not in Jaeger)"
        cli.output.line(f"  [{span.service}] {span.name} ← {described}: {jaeger.ui_url(trace_id)}")


def _span_json(span: SpanView) -> dict:
    return {
        "spanId": span.span_id,
        "parentSpanId": span.parent_id or "",
        "service": span.service,
        "name": span.name,
        "kind": span.kind,
        "startUnixNano": str(span.start_ns),
        "durationMs": round(span.duration_ms, 3),
        "error": span.error,
        "attributes": {
            key: value
            for key, value in span.attributes.items()
            if isinstance(value, str | int | float | bool)
        },
        "links": [{"traceId": trace_id, "spanId": span_id} for trace_id, span_id in span.links],
    }
