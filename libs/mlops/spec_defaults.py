"""What a model spec means where it says nothing: the one source of spec defaults.

The registry stores every spec with these filled in (`with_defaults`), so that a stored spec says all
it means; the trainer and the evaluator read the same values for a spec stored before a setting
existed, or for a message that did not pass through the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from mlops.registry.v1 import registry_pb2

TRAINING: Mapping[str, object] = MappingProxyType(
    {
        "hidden_layers": (64, 32),
        "epochs": 30,
        "learning_rate": 0.001,
        "batch_size": 128,
        "seed": 7,
        "early_stopping_patience": 5,
        "validation_fraction": 0.15,
        "test_fraction": 0.15,
        "dropout": 0.0,
        "weight_decay": 0.0,
        "parity_tolerance": 1e-4,
        "max_seconds": 1800,
    }
)
GATE_METRIC: Mapping[str, str] = MappingProxyType({"classification": "accuracy", "regression": "rmse"})
"""The gate's metric per task when the spec names none."""
GATE: Mapping[str, object] = MappingProxyType({"max_regression": 0.01})
CANARY_STEPS = (10, 50, 100)
ROLLOUT: Mapping[str, object] = MappingProxyType(
    {
        "strategy": "canary",
        "step_seconds": 20,
        "max_error_rate": 0.01,
        "max_p99_latency_ms": 50.0,
        "min_requests": 20,
        "auto_promote": True,
        "health_timeout_seconds": 120,
        "on_health_timeout": "rollback",
    }
)
MONITOR: Mapping[str, object] = MappingProxyType(
    {
        "method": "psi",
        "on_drift": "retrain",
        "on_degradation": "alert",
        "window_seconds": 30,
        "threshold": 0.2,
        "consecutive_windows": 2,
        "sampling_rate": 1.0,
        "min_samples": 200,
    }
)
SERVING: Mapping[str, object] = MappingProxyType({"max_batch_size": 64, "max_wait_us": 500})


def gate_metric(task: str) -> str:
    """The metric a gate judges when its spec names none."""
    return GATE_METRIC.get(task, GATE_METRIC["regression"])


def _fill(message, defaults: Mapping[str, object]) -> None:
    """Set every field the message leaves unset: not present (optional scalars), empty (strings, lists)."""
    for name, value in defaults.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.is_repeated:
            if not getattr(message, name):
                getattr(message, name).extend(value)
        elif field.has_presence:
            if not message.HasField(name):
                setattr(message, name, value)
        elif not getattr(message, name):
            setattr(message, name, value)


def with_defaults(spec: registry_pb2.ModelSpec) -> registry_pb2.ModelSpec:
    """A copy with every optional setting filled in."""
    full = registry_pb2.ModelSpec()
    full.CopyFrom(spec)
    body = full.spec
    _fill(body.training, TRAINING)
    if not body.gate.metric:
        body.gate.metric = gate_metric(body.task)
    _fill(body.gate, GATE)
    rollout = body.rollout
    if not rollout.strategy:
        rollout.strategy = ROLLOUT["strategy"]
    if not rollout.steps and rollout.strategy == "canary":
        rollout.steps.extend(CANARY_STEPS)
    _fill(rollout, ROLLOUT)
    _fill(body.monitor, MONITOR)
    _fill(body.serving, SERVING)
    return full
