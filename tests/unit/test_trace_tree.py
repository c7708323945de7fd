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


def test_repeats_beyond_the_limit_fold_into_one_counted_line_but_failures_stay_visible():
    spans = [span("root", None, "rollout wine", "mlops-deployer", 0, 100)]
    spans += [span(f"h{i}", "root", f"health check {i}", "mlops-deployer", 1 + i, 2 + i) for i in range(8)]
    spans.append(span("bad", "root", "health check 8", "mlops-deployer", 10, 11, error=True))
    spans.append(span("end", "root", "promote", "mlops-deployer", 20, 21))
    lines = render_tree(spans, repeats=2).splitlines()
    assert lines[1].endswith("health check 0 (internal) +1.0 ms, 1.00 ms")
    assert lines[2].endswith("health check 1 (internal) +2.0 ms, 1.00 ms")
    assert lines[3].endswith("health check 8 (internal) +10.0 ms, 1.00 ms  ✗ ERROR")
    assert lines[4] == "   ├─ [mlops-deployer] … 6 more like health check 2"
    assert lines[5].startswith("   └─ [mlops-deployer] promote")
    assert len(lines) == 6


def test_a_link_to_another_trace_is_named_on_the_span_that_holds_it():
    linked = span("r", None, "train wine", "mlops-trainer", 0, 5)
    linked.links.append(("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"))
    text = render_tree([linked])
    assert text.endswith("↪ links to trace 0af7651916cd43dd8448eb211c80319c span b7ad6b7169203331")
