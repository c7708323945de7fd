"""Charts drawn on the server as inline SVG: no script library to ship, nothing fetched from elsewhere,
and a page reads the same with scripts off."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _bounds(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if low == high:
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    return low, high


def line_chart(
    series: Sequence[Series],
    *,
    title: str = "",
    x_label: str = "",
    width: int = 640,
    height: int = 240,
    threshold: float | None = None,
) -> Markup:
    """Several series on one chart, with a legend, axes ticks and an optional dashed threshold."""
    drawn = [s for s in series if s.points]
    if not drawn:
        return Markup('<p class="empty">no points to draw</p>')
    left, right, top, bottom = 56, 12, 24 if title else 8, 36
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points] + ([threshold] if threshold is not None else [])
    x0, x1 = _bounds(xs)
    y0, y1 = _bounds(ys)
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height + 18 * ((len(drawn) + 2) // 3)}" '
        f'width="100%" aria-label="{escape(title or "chart")}">'
    ]
    if title:
        parts.append(f'<text x="{left}" y="14" class="title">{escape(title)}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="plot"/>')
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{left - 4}" y="{py(y) + 4:.1f}" class="tick" text-anchor="end">{_fmt(y)}</text>'
        )
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        parts.append(
            f'<text x="{px(x):.1f}" y="{top + plot_h + 14}" class="tick" text-anchor="middle">{_fmt(x)}</text>'
        )
    if x_label:
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 30}" class="tick" '
            f'text-anchor="middle">{escape(x_label)}</text>'
        )
    if threshold is not None:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{py(threshold):.1f}" y2="{py(threshold):.1f}" '
            'class="threshold"><title>threshold</title></line>'
        )
    for index, s in enumerate(drawn):
        color = PALETTE[index % len(PALETTE)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(s.points))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2">')
        parts.append(f"<title>{escape(s.name)}</title></polyline>")
        for x, y in s.points:
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}">'
                f"<title>{escape(s.name)}: {_fmt(x)} → {_fmt(y)}</title></circle>"
            )
        lx, ly = left + (index % 3) * (plot_w / 3), height + 18 * (index // 3) + 4
        parts.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{lx + 14:.1f}" y="{ly}" class="legend">{escape(s.name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def heat_color(score: float | None, threshold: float) -> str:
    """White at 0, amber towards the threshold, red at and beyond it; grey where nothing was judged."""
    if score is None:
        return "#e5e7eb"
    ratio = max(0.0, min(score / threshold, 2.0)) if threshold > 0 else (2.0 if score > 0 else 0.0)
    if ratio >= 1.0:
        strength = min(1.0, 0.6 + (ratio - 1.0) * 0.4)
        return f"rgba(220,38,38,{strength:.2f})"
    return f"rgba(245,158,11,{ratio * 0.8:.2f})"


def heat_map(
    rows: Sequence[str],
    columns: Sequence[str],
    scores: dict[tuple[str, str], float],
    *,
    threshold: float,
    cell: int = 34,
) -> Markup:
    """Rows (features) × columns (windows), each cell coloured by its score against the threshold."""
    if not rows or not columns:
        return Markup('<p class="empty">no windows judged yet</p>')
    left = min(180, 12 + 7 * max(len(r) for r in rows))
    top = 64
    width, height = left + cell * len(columns) + 8, top + cell * len(rows) + 8
    parts = [
        f'<svg class="heatmap" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'aria-label="drift per feature per window">'
    ]
    for ci, column in enumerate(columns):
        x = left + ci * cell + cell / 2
        parts.append(
            f'<text x="{x:.1f}" y="{top - 6}" class="tick" transform="rotate(-45 {x:.1f} {top - 6})">'
            f"{escape(column)}</text>"
        )
    for ri, row in enumerate(rows):
        y = top + ri * cell
        parts.append(
            f'<text x="{left - 6}" y="{y + cell / 2 + 4:.1f}" class="tick" text-anchor="end">{escape(row)}</text>'
        )
        for ci, column in enumerate(columns):
            score = scores.get((row, column))
            label = "not judged" if score is None else f"{score:.3f}"
            over = score is not None and score >= threshold
            parts.append(
                f'<rect x="{left + ci * cell}" y="{y}" width="{cell - 2}" height="{cell - 2}" '
                f'fill="{heat_color(score, threshold)}" class="cell{" over" if over else ""}">'
                f"<title>{escape(row)} @ {escape(column)}: {label} (threshold {threshold:g})</title></rect>"
            )
            if score is not None:
                parts.append(
                    f'<text x="{left + ci * cell + cell / 2 - 1:.1f}" y="{y + cell / 2 + 3:.1f}" '
                    f'class="cellnum" text-anchor="middle">{_fmt(score)[:5]}</text>'
                )
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass
class Node:
    id: str
    label: str
    kind: str
    """Its column: data set, run, version, evaluation, deployment, alias."""
    href: str = ""
    detail: str = ""


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)

    def add(self, node: Node) -> Node:
        if all(existing.id != node.id for existing in self.nodes):
            self.nodes.append(node)
        return node


LINEAGE_COLUMNS = ("dataset", "run", "version", "evaluation", "deployment", "alias")


def lineage_graph(graph: Graph, *, columns: Sequence[str] = LINEAGE_COLUMNS) -> Markup:
    """Left to right, one column per kind of node, arrows along the edges."""
    if not graph.nodes:
        return Markup('<p class="empty">no lineage recorded</p>')
    box_w, box_h, gap_x, gap_y = 150, 38, 46, 14
    placed: dict[str, tuple[float, float]] = {}
    used = [c for c in columns if any(n.kind == c for n in graph.nodes)]
    tallest = 1
    for ci, kind in enumerate(used):
        members = [n for n in graph.nodes if n.kind == kind]
        tallest = max(tallest, len(members))
        for ri, node in enumerate(members):
            placed[node.id] = (8 + ci * (box_w + gap_x), 24 + ri * (box_h + gap_y))
    width = 16 + len(used) * (box_w + gap_x)
    height = 32 + tallest * (box_h + gap_y)
    parts = [
        f'<svg class="lineage" role="img" viewBox="0 0 {width} {height}" width="{width}" aria-label="lineage">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#6b7280"/></marker></defs>',
    ]
    for ci, kind in enumerate(used):
        parts.append(f'<text x="{8 + ci * (box_w + gap_x)}" y="14" class="tick">{escape(kind)}</text>')
    for source, target in graph.edges:
        if source in placed and target in placed:
            (sx, sy), (tx, ty) = placed[source], placed[target]
            parts.append(
                f'<line x1="{sx + box_w}" y1="{sy + box_h / 2}" x2="{tx}" y2="{ty + box_h / 2}" '
                'class="edge" marker-end="url(#arrow)"/>'
            )
    for node in graph.nodes:
        x, y = placed[node.id]
        box = (
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" class="node {escape(node.kind)}"/>'
            f'<text x="{x + 8}" y="{y + 16}" class="nodelabel">{escape(node.label[:22])}</text>'
            f'<text x="{x + 8}" y="{y + 30}" class="nodedetail">{escape(node.detail[:26])}</text>'
            f"<title>{escape(node.label)} {escape(node.detail)}</title>"
        )
        parts.append(f'<a href="{escape(node.href)}">{box}</a>' if node.href else box)
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass
class Bar:
    depth: int
    label: str
    service: str
    start_ms: float
    duration_ms: float
    error: bool = False


def timeline(bars: Sequence[Bar], *, width: int = 960, row: int = 18) -> Markup:
    """A trace's spans as bars on one time axis, indented by depth, coloured by service."""
    if not bars:
        return Markup('<p class="empty">no spans</p>')
    services = sorted({b.service for b in bars})
    color = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(services)}
    label_w = 360
    total = max(b.start_ms + b.duration_ms for b in bars) or 1.0
    plot_w = width - label_w - 70
    height = 20 + row * len(bars)
    parts = [
        f'<svg class="timeline" role="img" viewBox="0 0 {width} {height}" width="100%" aria-label="trace timeline">'
    ]
    parts.append(f'<text x="{label_w}" y="12" class="tick">0 ms</text>')
    parts.append(f'<text x="{label_w + plot_w}" y="12" class="tick" text-anchor="end">{total:.1f} ms</text>')
    for index, bar in enumerate(bars):
        y = 18 + index * row
        x = label_w + bar.start_ms / total * plot_w
        w = max(1.0, bar.duration_ms / total * plot_w)
        label = f"{'  ' * bar.depth}{bar.service}: {bar.label}"
        parts.append(
            f'<text x="{4 + bar.depth * 10}" y="{y + 12}" class="spanlabel{" error" if bar.error else ""}">'
            f"{escape(label.strip()[:52])}</text>"
        )
        stroke = ' stroke="#dc2626" stroke-width="2"' if bar.error else ""
        parts.append(
            f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row - 5}" fill="{color[bar.service]}"'
            f"{stroke}>"
            f"<title>{escape(bar.service)} {escape(bar.label)}: +{bar.start_ms:.1f} ms, {bar.duration_ms:.2f} ms"
            f"{' ERROR' if bar.error else ''}</title></rect>"
        )
        parts.append(
            f'<text x="{min(x + w + 4, width - 66):.1f}" y="{y + 12}" class="tick">{bar.duration_ms:.1f} ms</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
