"""The CLI as people type it, against the running platform: `--json` after the command, tags set and
removed and found by search, and asking for a model to be retrained.

A model is trained once for the module through the platform itself (spec applied, data committed);
every command runs as a shell runs `mlops`, from the repository root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sklearn.datasets import load_wine

from tests.integration.conftest import eventually

ROOT = Path(__file__).resolve().parents[2]

SPEC = """apiVersion: mlops/v1
kind: ModelSpec
metadata: {{name: {model}}}
spec:
  dataset: {dataset}
  task: classification
  label: target
  training: {{hidden_layers: [16], epochs: {epochs}, learning_rate: 0.01, batch_size: 32, seed: 7}}
  gate: {{metric: accuracy, min: 0.5, max_regression: 0.5, max_p99_latency_ms: 50}}
"""


def run(*args: str) -> subprocess.CompletedProcess:
    """`mlops ARGS…` as typed in a shell at the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "mlops.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"},
        timeout=120,
    )


def mlops(*args: str) -> dict:
    """`mlops ARGS… --json`: the flag where people put it, after the command; the JSON it prints."""
    result = run(*args, "--json")
    assert result.returncode == 0, (
        f"mlops {' '.join(args)} --json exited {result.returncode}: {result.stderr}"
    )
    return json.loads(result.stdout)


def apply(tmp: Path, model: str, dataset: str, *, epochs: int) -> list[dict]:
    path = tmp / f"{model}-{epochs}.yaml"
    path.write_text(SPEC.format(model=model, dataset=dataset, epochs=epochs))
    return mlops("apply", "-f", str(path))


def versions(model: str) -> list[dict]:
    return mlops("models", "list", model).get("modelVersions", [])


def found(expression: str, model: str) -> list[tuple[str, int]]:
    response = mlops("models", "search", expression, "--model", model)
    return [(mv["model"], int(mv["version"])) for mv in response.get("modelVersions", [])]


@pytest.fixture(scope="module")
async def trained(tmp_path_factory) -> tuple[str, str]:
    """(model, data set): a model with one version trained on version 1 of its data set."""
    tmp = tmp_path_factory.mktemp("people")
    suffix = uuid.uuid4().hex[:8]
    model, dataset = f"people-{suffix}", f"people-data-{suffix}"
    apply(tmp, model, dataset, epochs=5)
    data = tmp / f"{dataset}.csv"
    load_wine(as_frame=True).frame.to_csv(data, index=False)
    mlops("data", "commit", str(data), "--dataset", dataset)
    await eventually(lambda: versions(model), timeout_s=240, interval_s=1, what=f"{model} v1 trained")
    return model, dataset


@pytest.mark.timeout(420)
async def test_tags_are_set_removed_and_found_by_search(trained):
    model, dataset = trained
    before = mlops("models", "show", f"{model}@1")["tags"]  # the trainer's own (trainer.epochs, ...)
    tagged = mlops("models", "tag", model, "1", "team=risk", "stage=dev")
    assert tagged["tags"] == {**before, "team": "risk", "stage": "dev"}

    assert found("tags.team = 'risk' and tags.stage = 'dev'", model) == [(model, 1)]
    assert found(f"tags.team = 'risk' and dataset = '{dataset}' and dataset_version = 1", model) == [
        (model, 1)
    ]
    assert found("metrics.accuracy >= 0 and tags.team = 'risk'", model) == [(model, 1)]
    assert found("metrics.accuracy > 1", model) == []
    assert found("tags.team = 'fraud'", model) == []

    untagged = mlops("models", "tag", model, "1", "--remove", "stage", "owner=ana")
    assert untagged["tags"] == {**before, "team": "risk", "owner": "ana"}
    assert found("tags.stage = 'dev'", model) == []
    assert found("tags.owner = 'ana'", model) == [(model, 1)]

    # the same version, shown to people: its tags listed
    shown = run("models", "show", f"{model}@1")
    assert shown.returncode == 0, shown.stderr
    rows = [line.replace("│", " ").split() for line in shown.stdout.splitlines()]
    assert ["team", "risk"] in rows and ["owner", "ana"] in rows
    assert not any(row[:1] == ["stage"] for row in rows)

    # --json after a group, and a bad expression refused before any call
    assert mlops("models", "show", f"{model}@1")["tags"]["owner"] == "ana"
    bad = run("models", "search", "tags.team == 'risk'", "--model", model, "--json")
    assert bad.returncode == 2 and bad.stdout == ""
    assert "tags.team == 'risk'" in bad.stderr


@pytest.mark.timeout(420)
async def test_retrain_asks_for_the_latest_spec_on_the_data_set_version(trained, tmp_path):
    model, dataset = trained
    wrong = run("retrain", model, "--dataset", f"not-{dataset}", "--json")
    assert wrong.returncode == 4, wrong.stderr  # INVALID_ARGUMENT: not the spec's data set
    assert dataset in wrong.stderr

    # a changed spec, retrained on the data already there: the trainer trains it anew
    spec = apply(tmp_path, model, dataset, epochs=6)
    asked = mlops("retrain", model, "--dataset", f"{dataset}@1", "--reason", "new epochs")
    assert asked["model"] == model and asked["eventId"]
    assert (asked["dataset"], int(asked["datasetVersion"])) == (dataset, 1)
    assert int(asked["specVersion"]) == int(spec[0]["specVersion"]) == 2

    def manual_run():
        runs = mlops("runs", "list", "--model", model).get("runs", [])
        return [r for r in runs if r.get("trigger") == "TRAINING_TRIGGER_MANUAL"]

    [run_] = await eventually(
        manual_run, timeout_s=240, interval_s=1, what="a run triggered by mlops retrain"
    )
    assert int(run_["specVersion"]) == int(asked["specVersion"])
    assert int(run_["datasetVersion"]) == 1

    # the latest data set version when none is named
    latest = mlops("retrain", model)
    assert (latest["dataset"], int(latest["datasetVersion"])) == (dataset, 1)
