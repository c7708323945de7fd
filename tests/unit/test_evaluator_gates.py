"""The gate policy: bounds, direction-aware regression against the champion, latency, size, slices."""

from __future__ import annotations

import pytest

from mlops.events.v1 import common_pb2, evaluation_pb2
from mlops.registry.v1 import registry_pb2
from services.evaluator.gates import Champion, GatePolicy, apply_gates, passed, regression_gate

GE = common_pb2.COMPARISON_GREATER_OR_EQUAL
LE = common_pb2.COMPARISON_LESS_OR_EQUAL


def gates_of(policy: GatePolicy, metrics, *, champion=None, p99=1.0, size=1024, slices=(), min_rows=1):
    results = apply_gates(
        policy,
        metrics=metrics,
        champion=champion,
        latency_p99_ms=p99,
        model_size_bytes=size,
        slices=slices,
        min_slice_rows=min_rows,
    )
    return {r.gate: r for r in results}, results


def test_policy_from_the_spec_keeps_unset_bounds_unset():
    gate = registry_pb2.GateSpec(metric="rmse", max=50.0, max_regression=0.0)
    policy = GatePolicy.from_proto(gate, task="regression")
    assert policy == GatePolicy(metric="rmse", max=50.0, max_regression=0.0)
    assert GatePolicy.from_proto(registry_pb2.GateSpec(), task="classification").metric == "accuracy"


def test_min_gate_passes_and_fails_with_the_margin_in_the_message():
    by_gate, _ = gates_of(GatePolicy("accuracy", min=0.85), {"accuracy": 0.912})
    ok = by_gate["min"]
    assert ok.passed and ok.observed == pytest.approx(0.912) and ok.threshold == 0.85
    assert ok.comparison == GE
    assert ok.message == "min: accuracy 0.912 >= min 0.85: passed by 0.062"

    by_gate, results = gates_of(GatePolicy("accuracy", min=0.85), {"accuracy": 0.7})
    bad = by_gate["min"]
    assert not bad.passed and not passed(results)
    assert bad.message == "min: accuracy 0.7 < min 0.85: failed by 0.15"


def test_max_gate_bounds_a_loss_from_above():
    by_gate, _ = gates_of(GatePolicy("rmse", max=50.0), {"rmse": 61.5})
    result = by_gate["max"]
    assert not result.passed and result.comparison == LE
    assert result.message == "max: rmse 61.5 > max 50: failed by 11.5"


def test_regression_of_a_higher_is_better_metric_is_champion_minus_challenger():
    result = regression_gate("accuracy", 0.80, Champion(3, {"accuracy": 0.95}), allowed=0.01)
    assert not result.passed
    assert result.observed == pytest.approx(0.15)
    assert result.threshold == 0.01 and result.comparison == LE
    assert result.message == (
        "max_regression: accuracy 0.95 (champion v3) -> 0.8, regressed by 0.15, "
        "more than the allowed 0.01: failed by 0.14"
    )


def test_a_rise_of_a_loss_is_a_regression():
    worse = regression_gate("rmse", 55.0, Champion(2, {"rmse": 50.0}), allowed=1.0)
    assert not worse.passed and worse.observed == pytest.approx(5.0)
    assert "regressed by 5" in worse.message and "failed by 4" in worse.message
    better = regression_gate("log_loss", 0.2, Champion(2, {"log_loss": 0.3}), allowed=0.0)
    assert better.passed and better.observed == pytest.approx(-0.1)
    assert "improved by 0.1" in better.message and "within the allowed 0" in better.message


def test_a_small_regression_within_the_allowance_passes():
    result = regression_gate("macro_f1", 0.895, Champion(1, {"macro_f1": 0.9}), allowed=0.01)
    assert result.passed
    assert "regressed by 0.005" in result.message and "within the allowed 0.01 by 0.005" in result.message


def test_no_champion_skips_the_regression_gate_and_counts_it_as_passed():
    by_gate, results = gates_of(GatePolicy("accuracy", max_regression=0.01), {"accuracy": 0.5})
    result = by_gate["max_regression"]
    assert result.skipped and result.passed and passed(results)
    assert result.message == "max_regression: no champion: regression check skipped"


def test_a_champion_that_could_not_be_scored_skips_the_regression_gate_with_the_reason():
    result = regression_gate("accuracy", 0.9, Champion(4, {}), allowed=0.01)
    assert result.skipped and result.passed
    assert "champion v4 has no accuracy" in result.message


def test_latency_and_size_gates():
    policy = GatePolicy("accuracy", max_p99_latency_ms=5.0, max_model_size_mb=1.0)
    by_gate, results = gates_of(policy, {"accuracy": 0.9}, p99=7.25, size=3 * 1024 * 1024)
    latency, size = by_gate["max_p99_latency_ms"], by_gate["max_model_size_mb"]
    assert not latency.passed and latency.observed == 7.25
    assert latency.message == "max_p99_latency_ms: p99 latency ms 7.25 > max_p99_latency_ms 5: failed by 2.25"
    assert not size.passed and size.observed == pytest.approx(3.0)
    assert "failed by 2" in size.message
    assert [r.gate for r in results] == ["max_p99_latency_ms", "max_model_size_mb"]


def test_gates_come_in_a_fixed_order_and_all_must_pass():
    policy = GatePolicy(
        "accuracy",
        min=0.5,
        max_regression=0.01,
        max_p99_latency_ms=5.0,
        max_model_size_mb=10.0,
        slice_min=0.5,
    )
    slices = [evaluation_pb2.SliceMetrics(column="c", value="a", row_count=20, metrics={"accuracy": 0.9})]
    _, results = gates_of(
        policy, {"accuracy": 0.9}, champion=Champion(1, {"accuracy": 0.89}), p99=1.0, slices=slices
    )
    assert [r.gate for r in results] == [
        "min",
        "max_regression",
        "max_p99_latency_ms",
        "max_model_size_mb",
        "slice:c=a",
    ]
    assert passed(results)


def test_slice_gate_fails_a_weak_slice_and_skips_small_or_undefined_ones():
    slices = [
        evaluation_pb2.SliceMetrics(column="colour", value="red", row_count=40, metrics={"accuracy": 0.6}),
        evaluation_pb2.SliceMetrics(column="colour", value="blue", row_count=40, metrics={"accuracy": 0.95}),
        evaluation_pb2.SliceMetrics(column="colour", value="green", row_count=3, metrics={"accuracy": 0.0}),
        evaluation_pb2.SliceMetrics(column="colour", value="grey", row_count=30, metrics={}),
    ]
    by_gate, results = gates_of(
        GatePolicy("accuracy", slice_min=0.8), {"accuracy": 0.9}, slices=slices, min_rows=10
    )
    red = by_gate["slice:colour=red"]
    assert not red.passed and red.comparison == GE
    assert red.message == "slice:colour=red: accuracy 0.6 < slice_min 0.8: failed by 0.2 (40 rows)"
    assert by_gate["slice:colour=blue"].passed
    green = by_gate["slice:colour=green"]
    assert green.skipped and green.passed and "3 held-out rows, fewer than 10" in green.message
    assert by_gate["slice:colour=grey"].skipped
    assert not passed(results)


def test_slice_gate_of_a_loss_is_a_ceiling():
    slices = [evaluation_pb2.SliceMetrics(column="sex", value="1", row_count=50, metrics={"rmse": 70.0})]
    by_gate, _ = gates_of(GatePolicy("rmse", slice_min=60.0), {"rmse": 55.0}, slices=slices)
    result = by_gate["slice:sex=1"]
    assert not result.passed and result.comparison == LE
    assert "rmse 70 > slice_min 60: failed by 10" in result.message


def test_a_metric_that_could_not_be_computed_fails_its_gates():
    by_gate, results = gates_of(GatePolicy("roc_auc", min=0.8, max_regression=0.01), {"accuracy": 1.0})
    assert not by_gate["min"].passed and "could not be computed" in by_gate["min"].message
    assert not by_gate["max_regression"].passed
    assert not passed(results)
