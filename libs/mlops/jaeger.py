"""Reading traces back from Jaeger's query API v3 (OTLP JSON), and drawing them as a tree."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import httpx

SPAN_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
TRACE_TAG = "trace.id"
"""The model-version tag holding the id of the trace the version was made in."""
SQL_VERBS = frozenset({"BEGIN", "COMMIT", "ROLLBACK", "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", ""})


@dataclass
class SpanView:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    error: bool
    attributes: dict[str, object]
    links: list[tuple[str, str]] = field(default_factory=list)
    """(trace id, span id) of every span this one links to."""
    children: list[SpanView] = field(default_factory=list)

    @property
    def is_sql(self) -> bool:
        """A database statement's client span: many per trace, left out of a tree by default."""
        return self.kind == "client" and self.name.split(" ")[0].rstrip(";") in SQL_VERBS

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(raw: dict) -> object:
    for key in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if key in raw:
            return int(raw[key]) if key == "intValue" else raw[key]
    return raw


class JaegerClient:
    """A small client of Jaeger's stable API v3."""

    def __init__(self, base_url: str = "http://127.0.0.1:16686", timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def ui_url(self, trace_id: str) -> str:
        return f"{self.base_url}/trace/{trace_id}"

    def trace(self, trace_id: str) -> list[SpanView]:
        """Every span of a trace; empty while Jaeger has not received any."""
        response = self.http.get(f"/api/v3/traces/{trace_id}")
        if response.status_code == 404:
            return []
        response.raise_for_status()
        spans: list[SpanView] = []
        for resource_spans in response.json().get("result", {}).get("resourceSpans", []):
            resource = {
                a["key"]: _value(a["value"]) for a in resource_spans["resource"].get("attributes", [])
            }
            for scope in resource_spans.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    spans.append(
                        SpanView(
                            trace_id=span["traceId"],
                            span_id=span["spanId"],
                            parent_id=span.get("parentSpanId") or None,
                            name=span["name"],
                            service=str(resource.get("service.name", "?")),
                            kind=SPAN_KINDS.get(span.get("kind", 0), "unspecified"),
                            start_ns=int(span["startTimeUnixNano"]),
                            end_ns=int(span["endTimeUnixNano"]),
                            error=span.get("status", {}).get("code") == 2,
                            attributes={a["key"]: _value(a["value"]) for a in span.get("attributes", [])},
                            links=[(link["traceId"], link["spanId"]) for link in span.get("links", [])],
                        )
                    )
        return spans

    def close(self) -> None:
        self.http.close()


def build_tree(spans: list[SpanView]) -> list[SpanView]:
    """Roots of the trace with children attached, in start order. Spans whose parent is missing are roots too."""
    by_id = {span.span_id: span for span in spans}
    roots: list[SpanView] = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = by_id.get(span.parent_id) if span.parent_id else None
        (parent.children if parent else roots).append(span)
    return roots


def _repeat_key(span: SpanView) -> tuple[str, str]:
    """Spans that differ only in numbers (`epoch 1`, `epoch 2`) repeat one another."""
    return span.service, re.sub(r"\d+", "#", span.name)


def _collapsed(children: list[SpanView], keep: int) -> list[SpanView | tuple[int, SpanView]]:
    """Siblings with more than `keep` repeats of one service and name in a row show the first `keep`
    and then one line that counts the rest; a repeat that failed is always shown."""
    shown: list[SpanView | tuple[int, SpanView]] = []
    index = 0
    while index < len(children):
        end = index
        key = _repeat_key(children[index])
        while end < len(children) and _repeat_key(children[end]) == key:
            end += 1
        run = children[index:end]
        shown.extend(run[:keep])
        hidden = [span for span in run[keep:] if not span.error]
        shown.extend(span for span in run[keep:] if span.error)
        if hidden:
            shown.append((len(hidden), hidden[0]))
        index = end
    return shown


def render_tree(spans: list[SpanView], *, repeats: int = 0) -> str:
    """The trace as indented text: service, span name, kind, duration, errors and links marked.

    With `repeats`, a run of more than that many siblings of the same name (a rollout's health
    checks, say) is cut short to one line that counts the rest."""
    lines: list[str] = []
    start = min((span.start_ns for span in spans), default=0)

    def walk(item: SpanView | tuple[int, SpanView], prefix: str, last: bool) -> None:
        branch = "└─ " if last else "├─ "
        if isinstance(item, tuple):
            count, span = item
            lines.append(f"{prefix}{branch}[{span.service}] … {count} more like {span.name}")
            return
        span = item
        offset = (span.start_ns - start) / 1e6
        mark = "  ✗ ERROR" if span.error else ""
        link = "".join(f"  ↪ links to trace {trace_id} span {span_id}" for trace_id, span_id in span.links)
        lines.append(
            f"{prefix}{branch}[{span.service}] {span.name} ({span.kind}) "
            f"+{offset:.1f} ms, {span.duration_ms:.2f} ms{mark}{link}"
        )
        children = _collapsed(span.children, repeats) if repeats else span.children
        for index, child in enumerate(children):
            walk(child, prefix + ("   " if last else "│  "), index == len(children) - 1)

    roots = build_tree(spans)
    for index, root in enumerate(roots):
        walk(root, "", index == len(roots) - 1)
    return "\n".join(lines)
