"""The gate policy of a model spec applied to one evaluation: pure, one `GateResult` per gate.

Gates run in a fixed order: min, max, max_regression, max_p99_latency_ms, max_model_size_mb,
then one slice gate per slice. A gate the spec does not set is not reported, except
max_regression, which the registry always fills in and which is reported as skipped when there is
no champion to compare with. Every message says which gate, the numbers, and by how much it passed
or failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mlops import spec_defaults
from mlops.events.v1 import common_pb2, evaluation_pb2
from mlops.measures import higher_is_better
from mlops.registry.v1 import registry_pb2

GE = common_pb2.COMPARISON_GREATER_OR_EQUAL
LE = common_pb2.COMPARISON_LESS_OR_EQUAL
MIB = 1024 * 1024


@dataclass(frozen=True)
class GatePolicy:
    """The spec's `gate`, with unset bounds as None."""

    metric: str
    min: float | None = None
    max: float | None = None
    max_regression: float | None = None
    max_p99_latency_ms: float | None = None
    max_model_size_mb: float | None = None
    slice_min: float | None = None

    @classmethod
    def from_proto(cls, gate: registry_pb2.GateSpec, *, task: str) -> GatePolicy:
        def bound(name: str) -> float | None:
            return getattr(gate, name) if gate.HasField(name) else None

        return cls(
            metric=gate.metric or spec_defaults.gate_metric(task),
            min=bound("min"),
            max=bound("max"),
            max_regression=bound("max_regression"),
            max_p99_latency_ms=bound("max_p99_latency_ms"),
            max_model_size_mb=bound("max_model_size_mb"),
            slice_min=bound("slice_min"),
        )


@dataclass(frozen=True)
class Champion:
    version: int
    metrics: Mapping[str, float]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _result(
    gate: str, *, passed: bool, observed: float, threshold: float, comparison: int, message: str
) -> evaluation_pb2.GateResult:
    return evaluation_pb2.GateResult(
        gate=gate,
        passed=passed,
        observed=observed,
        threshold=threshold,
        comparison=comparison,
        message=message,
    )


def _skipped(gate: str, threshold: float, comparison: int, message: str) -> evaluation_pb2.GateResult:
    return evaluation_pb2.GateResult(
        gate=gate, passed=True, skipped=True, threshold=threshold, comparison=comparison, message=message
    )


def bound_gate(
    gate: str, name: str, observed: float, threshold: float, comparison: int, *, bound: str | None = None
) -> evaluation_pb2.GateResult:
    """`observed >= threshold` (GE) or `observed <= threshold` (LE), with the margin in the message."""
    bound = bound or gate
    if comparison == GE:
        passed, margin = observed >= threshold, observed - threshold
        text = f"{'>=' if passed else '<'} {bound} {_fmt(threshold)}"
    else:
        passed, margin = observed <= threshold, threshold - observed
        text = f"{'<=' if passed else '>'} {bound} {_fmt(threshold)}"
    how = f"passed by {_fmt(margin)}" if passed else f"failed by {_fmt(-margin)}"
    return _result(
        gate,
        passed=passed,
        observed=observed,
        threshold=threshold,
        comparison=comparison,
        message=f"{gate}: {name} {_fmt(observed)} {text}: {how}",
    )


def regression_gate(
    metric: str, observed: float, champion: Champion | None, allowed: float
) -> evaluation_pb2.GateResult:
    """How much worse the challenger is than the champion on the same rows, at most `allowed`.

    `observed` is the worsening in the metric's own direction: champion minus challenger for a
    higher-is-better metric, challenger minus champion for a loss (a rise in RMSE is a regression);
    negative when the challenger is better.
    """
    gate = "max_regression"
    if champion is None:
        return _skipped(gate, allowed, LE, "max_regression: no champion: regression check skipped")
    if metric not in champion.metrics:
        return _skipped(
            gate,
            allowed,
            LE,
            f"max_regression: champion v{champion.version} has no {metric} on these rows: "
            "regression check skipped",
        )
    before = champion.metrics[metric]
    worsening = before - observed if higher_is_better(metric) else observed - before
    passed = worsening <= allowed
    change = f"{metric} {_fmt(before)} (champion v{champion.version}) -> {_fmt(observed)}"
    if worsening <= 0:
        verdict = f"improved by {_fmt(-worsening)}"
    else:
        verdict = f"regressed by {_fmt(worsening)}"
    if passed:
        tail = f"within the allowed {_fmt(allowed)} by {_fmt(allowed - worsening)}"
    else:
        tail = f"more than the allowed {_fmt(allowed)}: failed by {_fmt(worsening - allowed)}"
    return _result(
        gate,
        passed=passed,
        observed=worsening,
        threshold=allowed,
        comparison=LE,
        message=f"{gate}: {change}, {verdict}, {tail}",
    )


def apply_gates(
    policy: GatePolicy,
    *,
    metrics: Mapping[str, float],
    champion: Champion | None,
    latency_p99_ms: float,
    model_size_bytes: int,
    slices: Sequence[evaluation_pb2.SliceMetrics] = (),
    min_slice_rows: int = 1,
) -> list[evaluation_pb2.GateResult]:
    """Every configured gate's outcome, in order. A gate whose metric could not be computed fails."""
    metric = policy.metric
    higher = higher_is_better(metric)
    results: list[evaluation_pb2.GateResult] = []
    observed = metrics.get(metric)
    for gate, threshold, comparison in (("min", policy.min, GE), ("max", policy.max, LE)):
        if threshold is None:
            continue
        if observed is None:
            results.append(_undefined(gate, metric, threshold, comparison))
        else:
            results.append(bound_gate(gate, metric, observed, threshold, comparison))
    if policy.max_regression is not None:
        if observed is None:
            results.append(_undefined("max_regression", metric, policy.max_regression, LE))
        else:
            results.append(regression_gate(metric, observed, champion, policy.max_regression))
    if policy.max_p99_latency_ms is not None:
        results.append(
            bound_gate("max_p99_latency_ms", "p99 latency ms", latency_p99_ms, policy.max_p99_latency_ms, LE)
        )
    if policy.max_model_size_mb is not None:
        results.append(
            bound_gate("max_model_size_mb", "size MiB", model_size_bytes / MIB, policy.max_model_size_mb, LE)
        )
    if policy.slice_min is not None:
        for piece in slices:
            results.append(_slice_gate(piece, metric, policy.slice_min, higher, min_slice_rows))
    return results


def _slice_gate(
    piece: evaluation_pb2.SliceMetrics, metric: str, bound: float, higher: bool, min_rows: int
) -> evaluation_pb2.GateResult:
    """`slice_min` is the worst value a slice may have: a floor for accuracy-like metrics, a ceiling
    for losses (an RMSE of at least some value would make no sense as a gate)."""
    gate = f"slice:{piece.column}={piece.value}"
    comparison = GE if higher else LE
    if piece.row_count < min_rows:
        return _skipped(
            gate,
            bound,
            comparison,
            f"{gate}: {piece.row_count} held-out rows, fewer than {min_rows}: slice gate skipped",
        )
    if metric not in piece.metrics:
        return _skipped(gate, bound, comparison, f"{gate}: {metric} is undefined on this slice: skipped")
    result = bound_gate(gate, metric, piece.metrics[metric], bound, comparison, bound="slice_min")
    result.message += f" ({piece.row_count} rows)"
    return result


def _undefined(gate: str, metric: str, threshold: float, comparison: int) -> evaluation_pb2.GateResult:
    return _result(
        gate,
        passed=False,
        observed=0.0,
        threshold=threshold,
        comparison=comparison,
        message=f"{gate}: {metric} could not be computed on the held-out rows (observed is not a measurement): failed",
    )


def passed(results: Sequence[evaluation_pb2.GateResult]) -> bool:
    return all(result.passed for result in results)
