"""Drawing a trace as a tree: pure logic over span records."""

from __future__ import annotations

from mlops.jaeger import SpanView, build_tree, render_tree


def span(span_id, parent, name, service, start_ms, end_ms, error=False):
    return SpanView(
        "t", span_id, parent, name, service, "internal", start_ms * 1_000_000, end_ms * 1_000_000, error, {}
    )


def test_children_hang_under_their_parent_in_start_order_and_orphans_become_roots():
    spans = [
        span("c", "a", "process mlops.data.committed", "mlops-registry", 5, 9),
        span("a", None, "publish mlops.data.committed", "upstream", 0, 1),
        span("b", "a", "process mlops.data.committed", "mlops-trainer", 3, 12, error=True),
        span("x", "missing", "lonely", "mlops-monitor", 20, 21),
    ]
    roots = build_tree(spans)
    assert [root.span_id for root in roots] == ["a", "x"]
    assert [child.span_id for child in roots[0].children] == ["b", "c"]
    text = render_tree(spans)
    assert text.splitlines()[0] == "├─ [upstream] publish mlops.data.committed (internal) +0.0 ms, 1.00 ms"
    assert "[mlops-trainer] process mlops.data.committed (internal) +3.0 ms, 9.00 ms  ✗ ERROR" in text
    assert text.splitlines()[-1].startswith("└─ [mlops-monitor] lonely")
