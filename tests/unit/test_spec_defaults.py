"""One source of spec defaults: the registry fills a spec with what the trainer, the evaluator and
the deployer assume when a setting is missing, because they all read `mlops.spec_defaults`."""

from __future__ import annotations

import dataclasses

import pytest

from mlops import spec_defaults
from mlops.registry.v1 import registry_pb2 as pb
from services.deployer import policy
from services.evaluator.gates import GatePolicy
from services.registry import spec as specs
from services.trainer.training import TrainingParams


def bare(task: str) -> pb.ModelSpec:
    spec = pb.ModelSpec(api_version="mlops/v1", kind="ModelSpec")
    spec.metadata.name = "m"
    spec.spec.task = task
    return spec


def test_the_registry_fills_specs_from_the_shared_defaults():
    assert specs.with_defaults is spec_defaults.with_defaults
    body = specs.with_defaults(bare("classification")).spec
    assert list(body.training.hidden_layers) == [64, 32] and body.training.max_seconds == 1800
    assert (body.gate.metric, body.gate.max_regression) == ("accuracy", 0.01)
    assert (body.rollout.strategy, list(body.rollout.steps)) == ("canary", [10, 50, 100])
    assert body.rollout.auto_promote and body.rollout.on_health_timeout == "rollback"
    assert (body.monitor.method, body.monitor.min_samples) == ("psi", 200)
    assert (body.serving.max_batch_size, body.serving.max_wait_us) == (64, 500)
    assert specs.validate(specs.with_defaults(bare("regression"))) == [
        "spec.dataset: is required (the data set this model trains on)",
        "spec.label: is required (the column to predict)",
    ]


def test_set_values_are_kept_even_when_they_are_zero_or_false():
    spec = bare("regression")
    spec.spec.training.epochs = 1
    spec.spec.training.dropout = 0.0
    spec.spec.rollout.auto_promote = False
    spec.spec.rollout.strategy = "shadow"
    spec.spec.serving.max_wait_us = 0
    body = specs.with_defaults(spec).spec
    assert body.training.epochs == 1 and body.training.HasField("dropout")
    assert not body.rollout.auto_promote and not body.rollout.steps
    assert body.serving.max_wait_us == 0 and body.gate.metric == "rmse"


def test_the_trainer_assumes_what_the_registry_fills_in():
    filled = specs.with_defaults(bare("classification")).spec.training
    assert TrainingParams.from_spec(filled) == TrainingParams.from_spec(pb.TrainingSpec()) == TrainingParams()
    for field in dataclasses.fields(TrainingParams):
        value = getattr(TrainingParams(), field.name)
        expected = getattr(filled, field.name)
        assert (tuple(expected) if field.name == "hidden_layers" else expected) == pytest.approx(value), (
            field.name
        )


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_evaluator_judges_the_metric_the_registry_fills_in(task):
    filled = specs.with_defaults(bare(task)).spec.gate
    assert GatePolicy.from_proto(pb.GateSpec(), task=task).metric == filled.metric
    assert GatePolicy.from_proto(filled, task=task).max_regression == filled.max_regression


def test_the_deployer_assumes_the_health_timeout_the_registry_fills_in():
    rollout = specs.with_defaults(bare("classification")).spec.rollout
    assert policy.DEFAULT_HEALTH_TIMEOUT_S == rollout.health_timeout_seconds
    assert policy.ROLLBACK_ON_TIMEOUT == rollout.on_health_timeout
