"""Seeded random search: spaces, casting to the spec's field types, and the job key."""

from __future__ import annotations

import math

import pytest
from google.protobuf import json_format

from mlops.errors import InvalidArgument
from mlops.registry.v1 import registry_pb2 as pb
from services.trainer.search import better, cast, sample_trials
from services.trainer.storage import job_key, trial_run_id
from services.trainer.training import TrainingParams


def _search(params: dict, trials: int = 8) -> pb.SearchSpec:
    return json_format.ParseDict({"trials": trials, "params": params}, pb.SearchSpec())


SPACE = {
    "learning_rate": {"log_uniform": {"low": 1e-4, "high": 1e-2}},
    "dropout": {"uniform": {"low": 0.0, "high": 0.5}},
    "batch_size": {"int_uniform": {"low": 16, "high": 64, "step": 16}},
    "hidden_layers": {"choice": [[64, 32], [128, 64], [16]]},
}


def test_trials_are_drawn_from_their_spaces_with_the_spec_types():
    trials = sample_trials(_search(SPACE), TrainingParams(seed=3, epochs=5))
    assert len(trials) == 8
    for trial in trials:
        assert 1e-4 <= trial.learning_rate <= 1e-2
        assert 0.0 <= trial.dropout <= 0.5
        assert trial.batch_size in (16, 32, 48, 64) and isinstance(trial.batch_size, int)
        assert trial.hidden_layers in ((64, 32), (128, 64), (16,))
        assert all(isinstance(w, int) for w in trial.hidden_layers)
        assert trial.epochs == 5 and trial.seed == 3  # untouched settings stay the spec's
    assert len({t.learning_rate for t in trials}) == 8


def test_same_seed_same_trials_other_seed_other_trials():
    search = _search(SPACE)
    assert sample_trials(search, TrainingParams(seed=3)) == sample_trials(search, TrainingParams(seed=3))
    assert sample_trials(search, TrainingParams(seed=3)) != sample_trials(search, TrainingParams(seed=4))


def test_log_uniform_spreads_over_orders_of_magnitude():
    trials = sample_trials(_search({"learning_rate": SPACE["learning_rate"]}, trials=200), TrainingParams())
    logs = [math.log10(t.learning_rate) for t in trials]
    assert sum(v < -3 for v in logs) > 60 and sum(v > -3 for v in logs) > 60


def test_cast_refuses_unknown_or_fixed_settings():
    with pytest.raises(InvalidArgument, match="not a tunable"):
        cast("momentum", 0.9)
    with pytest.raises(InvalidArgument, match="not a tunable"):
        cast("test_fraction", 0.2)
    assert cast("epochs", 12.0) == 12 and cast("hidden_layers", [8.0, 4.0]) == (8, 4)


def test_better_knows_which_metrics_fall():
    assert better("accuracy", 0.9, 0.8) and not better("accuracy", 0.7, 0.8)
    assert better("rmse", 1.0, 2.0) and not better("log_loss", 0.5, 0.4)
    assert better("accuracy", 0.1, None)
    assert better("error_rate", 0.1, 0.2) and better("val_loss", 0.1, 0.2) and not better("r2", 0.1, 0.2)


def test_job_key_is_stable_and_names_spec_version_and_bytes():
    key = job_key(model="m", spec_version=1, dataset="d", dataset_sha256="a" * 64)
    assert key == job_key(model="m", spec_version=1, dataset="d", dataset_sha256="a" * 64)
    assert key != job_key(model="m", spec_version=2, dataset="d", dataset_sha256="a" * 64)
    assert key != job_key(model="m", spec_version=1, dataset="d", dataset_sha256="b" * 64)
    assert len(key) == 32 and trial_run_id(key, 0) != trial_run_id(key, 1)


def test_params_from_spec_keep_defaults_for_unset_fields():
    training = json_format.ParseDict({"hidden_layers": [8], "epochs": 3}, pb.TrainingSpec())
    params = TrainingParams.from_spec(training)
    assert params.hidden_layers == (8,) and params.epochs == 3 and params.learning_rate == 0.001
    assert params.as_strings()["hidden_layers"] == "8"
