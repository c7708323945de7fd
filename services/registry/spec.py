"""Model specs: defaults (`mlops.spec_defaults`, shared with the trainer and the evaluator) and
validation, pure functions over the `ModelSpec` message.

Validation collects every problem with its field path (`spec.training.epochs: …`), so a user fixes
a spec in one round instead of one error at a time.
"""

from __future__ import annotations

import hashlib
import re
from itertools import pairwise

from mlops.measures import TASK_METRICS
from mlops.registry.v1 import registry_pb2
from mlops.spec_defaults import with_defaults as with_defaults  # where the registry's modules find it

API_VERSION = "mlops/v1"
KIND = "ModelSpec"
TASKS = ("classification", "regression")
STRATEGIES = ("canary", "blue_green", "shadow", "direct")
DRIFT_METHODS = ("psi", "ks", "chi2")
DRIFT_ACTIONS = ("retrain", "alert", "none")
HEALTH_TIMEOUT_ACTIONS = ("rollback", "pause")

# What one training spec may ask of a worker. A spec past these is refused at `mlops apply`
# with the bound named, instead of being accepted and then exhausting a worker's memory or time.
MAX_HIDDEN_LAYERS = 16
MAX_LAYER_WIDTH = 4_096
MAX_PARAMETERS = 20_000_000
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_TRAINING_SECONDS = 6 * 3600
MAX_SEARCH_TRIALS = 200
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def validate(spec: registry_pb2.ModelSpec) -> list[str]:
    """Every problem of a (defaulted) spec, each prefixed with its field path; empty when valid."""
    problems: list[str] = []

    def need(condition: bool, path: str, message: str) -> None:
        if not condition:
            problems.append(f"{path}: {message}")

    need(spec.api_version == API_VERSION, "apiVersion", f"must be {API_VERSION!r}, got {spec.api_version!r}")
    need(spec.kind == KIND, "kind", f"must be {KIND!r}, got {spec.kind!r}")
    need(
        bool(NAME.match(spec.metadata.name)),
        "metadata.name",
        f"{spec.metadata.name!r} is not a name: lowercase letters, digits and '-', at most 63, no '-' at the ends",
    )
    body = spec.spec
    need(bool(body.dataset), "spec.dataset", "is required (the data set this model trains on)")
    need(body.task in TASKS, "spec.task", f"must be one of {', '.join(TASKS)}, got {body.task!r}")
    need(bool(body.label), "spec.label", "is required (the column to predict)")
    if body.label in body.features:
        problems.append(f"spec.features: contains the label column {body.label!r}")
    for name, values in (("features", body.features), ("slices", body.slices)):
        duplicates = sorted({v for v in values if list(values).count(v) > 1})
        if duplicates:
            problems.append(f"spec.{name}: listed twice: {', '.join(duplicates)}")
    for index, value in enumerate(body.features):
        need(bool(value.strip()), f"spec.features[{index}]", "is empty")

    training = body.training
    need(
        len(training.hidden_layers) <= MAX_HIDDEN_LAYERS,
        "spec.training.hidden_layers",
        f"at most {MAX_HIDDEN_LAYERS} layers, got {len(training.hidden_layers)}",
    )
    for index, width in enumerate(training.hidden_layers):
        need(
            1 <= width <= MAX_LAYER_WIDTH,
            f"spec.training.hidden_layers[{index}]",
            f"must be 1 to {MAX_LAYER_WIDTH}, got {width}",
        )
    if all(1 <= width <= MAX_LAYER_WIDTH for width in training.hidden_layers):
        # Weights between hidden layers alone; the input and output layers add a few more per
        # feature and class, which the data set decides and the trainer checks again.
        weights = sum(a * b + b for a, b in pairwise(training.hidden_layers))
        need(
            weights <= MAX_PARAMETERS,
            "spec.training.hidden_layers",
            f"{list(training.hidden_layers)} has {weights:,} weights between hidden layers; "
            f"at most {MAX_PARAMETERS:,}",
        )
    need(
        1 <= training.epochs <= MAX_EPOCHS,
        "spec.training.epochs",
        f"must be 1 to {MAX_EPOCHS}, got {training.epochs}",
    )
    need(
        0 < training.learning_rate < 10,
        "spec.training.learning_rate",
        f"must be above 0 and below 10, got {training.learning_rate}",
    )
    need(
        1 <= training.batch_size <= MAX_BATCH_SIZE,
        "spec.training.batch_size",
        f"must be 1 to {MAX_BATCH_SIZE}, got {training.batch_size}",
    )
    need(
        1 <= training.max_seconds <= MAX_TRAINING_SECONDS,
        "spec.training.max_seconds",
        f"must be 1 to {MAX_TRAINING_SECONDS} (the longest a training job may run), got {training.max_seconds}",
    )
    need(
        training.early_stopping_patience >= 0, "spec.training.early_stopping_patience", "must not be negative"
    )
    need(
        0 < training.validation_fraction < 0.5,
        "spec.training.validation_fraction",
        "must be above 0 and below 0.5",
    )
    need(0 < training.test_fraction < 0.5, "spec.training.test_fraction", "must be above 0 and below 0.5")
    need(0 <= training.dropout < 1, "spec.training.dropout", "must be at least 0 and below 1")
    need(training.weight_decay >= 0, "spec.training.weight_decay", "must not be negative")
    need(training.parity_tolerance > 0, "spec.training.parity_tolerance", "must be above 0")
    if training.HasField("search"):
        search = training.search
        need(
            1 <= search.trials <= MAX_SEARCH_TRIALS,
            "spec.training.search.trials",
            f"must be 1 to {MAX_SEARCH_TRIALS}, got {search.trials}",
        )
        for name, param in search.params.items():
            path = f"spec.training.search.params.{name}"
            kind = param.WhichOneof("space")
            if kind is None:
                problems.append(f"{path}: give one of uniform, log_uniform, int_uniform, choice")
            elif kind in ("uniform", "log_uniform", "int_uniform"):
                space = getattr(param, kind)
                need(
                    space.low < space.high,
                    f"{path}.{kind}",
                    f"low ({space.low}) must be below high ({space.high})",
                )
                if kind == "log_uniform":
                    need(space.low > 0, f"{path}.{kind}.low", "must be above 0 for a log scale")
            else:
                need(len(param.choice.values) >= 1, f"{path}.choice", "must list at least one value")

    gate = body.gate
    metrics = TASK_METRICS.get(body.task, ())
    if metrics:
        need(
            gate.metric in metrics,
            "spec.gate.metric",
            f"{gate.metric!r} is not a {body.task} metric; use one of {', '.join(metrics)}",
        )
    need(gate.max_regression >= 0, "spec.gate.max_regression", "must not be negative")
    if gate.HasField("max_p99_latency_ms"):
        need(gate.max_p99_latency_ms > 0, "spec.gate.max_p99_latency_ms", "must be above 0")
    if gate.HasField("min") and gate.HasField("max"):
        need(gate.min <= gate.max, "spec.gate", f"min ({gate.min}) must not exceed max ({gate.max})")

    rollout = body.rollout
    need(
        rollout.strategy in STRATEGIES,
        "spec.rollout.strategy",
        f"must be one of {', '.join(STRATEGIES)}, got {rollout.strategy!r}",
    )
    steps = list(rollout.steps)
    if rollout.strategy == "canary":
        need(bool(steps), "spec.rollout.steps", "a canary needs at least one step")
    for index, step in enumerate(steps):
        need(
            1 <= step <= 100,
            f"spec.rollout.steps[{index}]",
            f"must be a traffic share from 1 to 100, got {step}",
        )
    if steps and any(b <= a for a, b in pairwise(steps)):
        problems.append(f"spec.rollout.steps: must increase strictly, got {steps}")
    if steps and rollout.strategy == "canary":
        need(steps[-1] == 100, "spec.rollout.steps", f"must end at 100 (full traffic), ends at {steps[-1]}")
    need(rollout.step_seconds >= 0, "spec.rollout.step_seconds", "must not be negative")
    need(0 <= rollout.max_error_rate <= 1, "spec.rollout.max_error_rate", "must be a fraction from 0 to 1")
    need(rollout.max_p99_latency_ms > 0, "spec.rollout.max_p99_latency_ms", "must be above 0")
    need(rollout.min_requests >= 0, "spec.rollout.min_requests", "must not be negative")
    need(
        rollout.health_timeout_seconds >= 1,
        "spec.rollout.health_timeout_seconds",
        f"must be at least 1, got {rollout.health_timeout_seconds}",
    )
    need(
        rollout.on_health_timeout in HEALTH_TIMEOUT_ACTIONS,
        "spec.rollout.on_health_timeout",
        f"must be one of {', '.join(HEALTH_TIMEOUT_ACTIONS)}, got {rollout.on_health_timeout!r}",
    )
    if rollout.HasField("max_prediction_drift"):
        need(rollout.max_prediction_drift > 0, "spec.rollout.max_prediction_drift", "must be above 0")

    monitor = body.monitor
    need(monitor.window_seconds >= 1, "spec.monitor.window_seconds", "must be at least 1")
    need(
        monitor.method in DRIFT_METHODS,
        "spec.monitor.method",
        f"must be one of {', '.join(DRIFT_METHODS)}, got {monitor.method!r}",
    )
    need(monitor.threshold > 0, "spec.monitor.threshold", "must be above 0")
    need(monitor.consecutive_windows >= 1, "spec.monitor.consecutive_windows", "must be at least 1")
    need(
        monitor.on_drift in DRIFT_ACTIONS,
        "spec.monitor.on_drift",
        f"must be one of {', '.join(DRIFT_ACTIONS)}, got {monitor.on_drift!r}",
    )
    need(
        monitor.on_degradation in DRIFT_ACTIONS,
        "spec.monitor.on_degradation",
        f"must be one of {', '.join(DRIFT_ACTIONS)}, got {monitor.on_degradation!r}",
    )
    need(0 < monitor.sampling_rate <= 1, "spec.monitor.sampling_rate", "must be above 0 and at most 1")
    need(monitor.min_samples >= 0, "spec.monitor.min_samples", "must not be negative")

    serving = body.serving
    need(1 <= serving.max_batch_size <= 4096, "spec.serving.max_batch_size", "must be 1 to 4096")
    need(0 <= serving.max_wait_us <= 1_000_000, "spec.serving.max_wait_us", "must be 0 to 1000000")
    return problems


def fingerprint(spec: registry_pb2.ModelSpec) -> str:
    """sha256 of the spec's deterministic encoding: applying the same spec twice changes nothing."""
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()
