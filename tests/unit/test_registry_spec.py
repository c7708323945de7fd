"""Model spec defaults and validation, and CSV schema inference: pure logic of the registry."""

from __future__ import annotations

import pytest
import yaml
from google.protobuf import json_format

from mlops.errors import InvalidArgument
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.handlers import csv_schema
from services.registry.spec import fingerprint, validate, with_defaults

MINIMAL = {
    "apiVersion": "mlops/v1",
    "kind": "ModelSpec",
    "metadata": {"name": "iris"},
    "spec": {"dataset": "iris", "task": "classification", "label": "species"},
}


def parse(document: dict) -> pb.ModelSpec:
    return json_format.ParseDict(document, pb.ModelSpec())


def test_a_minimal_spec_gets_every_default_and_is_valid():
    spec = with_defaults(parse(MINIMAL))
    assert validate(spec) == []
    assert list(spec.spec.training.hidden_layers) == [64, 32]
    assert spec.spec.gate.metric == "accuracy"
    assert list(spec.spec.rollout.steps) == [10, 50, 100]
    assert spec.spec.monitor.method == "psi" and spec.spec.monitor.on_drift == "retrain"


def test_regression_defaults_to_rmse_and_rejects_classification_metrics():
    document = yaml.safe_load(yaml.safe_dump(MINIMAL))
    document["spec"]["task"] = "regression"
    assert with_defaults(parse(document)).spec.gate.metric == "rmse"
    document["spec"]["gate"] = {"metric": "accuracy"}
    assert validate(with_defaults(parse(document))) == [
        "spec.gate.metric: 'accuracy' is not a regression metric; use one of rmse, mae, r2"
    ]


def test_every_problem_is_named_by_its_field_path():
    document = yaml.safe_load(yaml.safe_dump(MINIMAL))
    document["apiVersion"] = "v2"
    document["spec"].update(
        label="",
        features=["a", "a"],
        rollout={"steps": [50, 10], "max_prediction_drift": 0},
        training={
            "epochs": 0,
            "learning_rate": -1,
            "search": {"trials": 0, "params": {"lr": {"uniform": {"low": 1, "high": 0}}}},
        },
        monitor={"threshold": 0, "on_drift": "panic"},
    )
    problems = validate(with_defaults(parse(document)))
    paths = {problem.split(":")[0] for problem in problems}
    assert paths == {
        "apiVersion",
        "spec.label",
        "spec.features",
        "spec.training.epochs",
        "spec.training.learning_rate",
        "spec.training.search.trials",
        "spec.training.search.params.lr.uniform",
        "spec.rollout.steps",
        "spec.rollout.max_prediction_drift",
        "spec.monitor.threshold",
        "spec.monitor.on_drift",
    }, problems


def test_the_fingerprint_ignores_field_order_but_not_content():
    a = with_defaults(parse(MINIMAL))
    b = with_defaults(parse(dict(reversed(list(MINIMAL.items())))))
    assert fingerprint(a) == fingerprint(b)
    b.spec.training.epochs = 31
    assert fingerprint(a) != fingerprint(b)


def test_csv_schema_infers_types_nulls_and_row_count():
    columns, rows = csv_schema(b"a,b,c,d\n1,1.5,x,\n2,2,y,3\n")
    assert rows == 2
    assert [(c.name, c.type, c.nullable) for c in columns] == [
        ("a", "int64", False),
        ("b", "float64", False),
        ("c", "string", False),
        ("d", "int64", True),
    ]
    with pytest.raises(InvalidArgument, match="empty"):
        csv_schema(b"")


def test_a_spec_that_asks_too_much_of_a_worker_is_refused_with_each_bound_named():
    document = yaml.safe_load(yaml.safe_dump(MINIMAL))
    document["spec"]["training"] = {
        "hidden_layers": [4096] * 17,
        "epochs": 1_000_000,
        "batch_size": 10_000_000,
        "max_seconds": 0,
        "search": {"trials": 100_000, "params": {"lr": {"uniform": {"low": 0.1, "high": 1}}}},
    }
    document["spec"]["rollout"] = {"health_timeout_seconds": 0, "on_health_timeout": "wait"}
    problems = validate(with_defaults(parse(document)))
    text = "\n".join(problems)
    assert "spec.training.hidden_layers: at most 16 layers, got 17" in text
    assert "weights between hidden layers; at most 20,000,000" in text
    assert "spec.training.epochs: must be 1 to 10000, got 1000000" in text
    assert "spec.training.batch_size: must be 1 to 65536, got 10000000" in text
    assert "spec.training.max_seconds: must be 1 to 21600" in text
    assert "spec.training.search.trials: must be 1 to 200, got 100000" in text
    assert "spec.rollout.health_timeout_seconds: must be at least 1, got 0" in text
    assert "spec.rollout.on_health_timeout: must be one of rollback, pause, got 'wait'" in text


def test_a_wide_but_shallow_network_within_the_weight_bound_is_accepted():
    document = yaml.safe_load(yaml.safe_dump(MINIMAL))
    document["spec"]["training"] = {"hidden_layers": [4096, 4096]}
    spec = with_defaults(parse(document))
    assert validate(spec) == []
    assert spec.spec.training.max_seconds == 1800
    assert spec.spec.rollout.health_timeout_seconds == 120
    assert spec.spec.rollout.on_health_timeout == "rollback"
