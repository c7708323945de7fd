"""Traces from Jaeger's API v3, drawn as a tree and a timeline, so that a Jaeger without a web UI
still shows them; a link to the Jaeger UI where there is one."""

from __future__ import annotations

import asyncio
import re

import httpx
from starlette.requests import Request
from starlette.routing import Route

from mlops.jaeger import TRACE_TAG, SpanView, build_tree
from mlops.registry.v1 import registry_pb2
from services.console.app import caller, render
from services.console.svg import Bar, timeline

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_SPANS = 400


def flatten(spans: list[SpanView], *, keep_sql: bool = False) -> list[tuple[int, SpanView]]:
    """Spans in tree order with their depth (SQL statements left out unless asked)."""
    shown = spans if keep_sql else [s for s in spans if not s.is_sql]
    rows: list[tuple[int, SpanView]] = []

    def walk(span: SpanView, depth: int) -> None:
        rows.append((depth, span))
        for child in span.children:
            walk(child, depth + 1)

    for root in build_tree(shown):
        walk(root, 0)
    return rows[:MAX_SPANS]


def bars(rows: list[tuple[int, SpanView]]) -> list[Bar]:
    start = min((span.start_ns for _, span in rows), default=0)
    return [
        Bar(depth, span.name, span.service, (span.start_ns - start) / 1e6, span.duration_ms, span.error)
        for depth, span in rows
    ]


async def traces_page(request: Request):
    """The traces the platform's model versions were made in, newest first (`?model=` for one model)."""
    model = request.query_params.get("model", "").strip()
    found = await caller(request).call(
        "registry",
        "SearchModelVersions",
        registry_pb2.SearchModelVersionsRequest(models=[model] if model else [], page_size=100),
    )
    versions = [v for v in found.model_versions if v.tags.get(TRACE_TAG)]
    return render(request, "traces.html", versions=versions, trace_tag=TRACE_TAG, model=model)


async def trace_page(request: Request):
    trace_id = request.path_params["trace_id"].lower()
    if not TRACE_ID.match(trace_id):
        return render(request, "error.html", 400, error="a trace id is 32 hexadecimal digits")
    jaeger = request.app.state.jaeger
    error, spans = "", []
    if jaeger is None:
        error = "no Jaeger query API is configured (MLOPS_JAEGER_QUERY_URL)"
    else:
        try:
            spans = await asyncio.to_thread(jaeger.trace, trace_id)
        except httpx.HTTPError as failure:
            error = f"Jaeger at {jaeger.base_url} did not answer: {type(failure).__name__}"
    keep_sql = request.query_params.get("sql") == "1"
    rows = flatten(spans, keep_sql=keep_sql)
    ui = request.app.state.settings.jaeger_ui_url
    return render(
        request,
        "trace.html",
        trace_id=trace_id,
        rows=rows,
        total=len(spans),
        services=sorted({s.service for s in spans}),
        chart=timeline(bars(rows)) if rows else None,
        error=error,
        keep_sql=keep_sql,
        ui_link=f"{ui.rstrip('/')}/trace/{trace_id}" if ui else "",
    )


routes = [Route("/traces", traces_page), Route("/traces/{trace_id}", trace_page)]
