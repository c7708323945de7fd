"""The `mlops` CLI, run as a process against a real registry that this module starts on a free port."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlops.grpc import open_sync_channel
from mlops.registry.v1 import registry_pb2, registry_pb2_grpc
from tests.integration.conftest import jaeger_trace
from tests.unit.test_cli_apply import DESIGN_SPEC

ROOT = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 90.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)  # the stack's variables, loaded from .stack/env by tests/conftest.py
    env.pop("OTEL_SERVICE_NAME", None)  # each process names itself: mlops-registry, mlops-cli
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[str]:
    """`python -m services.registry` on a free port, ready when its gRPC health says SERVING."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("registry") / "registry.log"
    env = _environment(MLOPS_REGISTRY_GRPC_PORT=str(port), MLOPS_REGISTRY_METRICS_PORT=str(_free_port()))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.registry"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    address = f"127.0.0.1:{port}"
    try:
        _wait_serving(address, process, log_path)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_serving(address: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    last = "no answer yet"
    with open_sync_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the registry exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                reply = health.Check(
                    health_pb2.HealthCheckRequest(service="mlops.registry.v1.Registry"), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as error:
                last = error.code().name
            time.sleep(0.2)
    pytest.fail(
        f"the registry was not SERVING within {START_DEADLINE_S}s ({last}):\n{log_path.read_text()[-4000:]}"
    )


def mlops(registry: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "mlops.cli", "--registry", registry, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_environment(COLUMNS="200"),
        timeout=120,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def as_json(result: subprocess.CompletedProcess):
    return json.loads(ok(result).stdout)


def spec_text(model: str, dataset: str | None = None) -> str:
    # A data set of the test's own: a spec bound to `wine` would be trained by `make demo`'s commit.
    dataset = dataset or f"ds-{model}"
    return DESIGN_SPEC.replace("name: wine-quality", f"name: {model}").replace(
        "dataset: wine ", f"dataset: {dataset} "
    )


@pytest.fixture
def model() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def test_apply_a_good_spec_then_the_same_again(registry, model, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text(model))
    assert (
        ok(mlops(registry, "apply", "-f", str(path))).stdout.strip() == f"{model}: applied as spec version 1"
    )
    [response] = as_json(mlops(registry, "--json", "apply", "-f", str(path)))
    assert response["specVersion"] == "1"
    assert response["changed"] is False
    assert response["applied"]["spec"]["metadata"]["name"] == model
    changed = spec_text(model).replace("epochs: 30", "epochs: 40")
    assert "applied as spec version 2" in ok(mlops(registry, "apply", "-f", "-", stdin=changed)).stdout


def test_a_bad_spec_exits_4_listing_every_field_path(registry, model, tmp_path):
    bad = (
        spec_text(model)
        .replace("epochs: 30", "epochs: 0")
        .replace("task: classification", "task: clustering")
    )
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    result = mlops(registry, "apply", "-f", str(path))
    assert result.returncode == 4, result.stderr
    assert "spec.training.epochs: must be 1 to 10000, got 0" in result.stderr
    assert "spec.task: must be one of classification, regression, got 'clustering'" in result.stderr
    assert result.stdout == ""

    typo = spec_text(model).replace("epochs: 30", "epoch: 30")
    result = mlops(registry, "apply", "-f", "-", stdin=typo)
    assert result.returncode == 4
    assert "spec.training.epoch: unknown field; did you mean 'epochs'?" in result.stderr


def test_one_bad_document_applies_none(registry, model):
    good_model, bad_model = f"{model}-a", f"{model}-b"
    text = spec_text(good_model) + "---\n" + spec_text(bad_model).replace("label: target", "label: ''")
    result = mlops(registry, "apply", "-f", "-", stdin=text)
    assert result.returncode == 4, result.stderr
    assert f"<stdin>, document 2 ({bad_model}) is invalid" in result.stderr
    assert "spec.label: is required" in result.stderr
    assert mlops(registry, "models", "list", good_model).returncode == 0  # listing versions of a model
    with open_sync_channel(registry) as channel, pytest.raises(grpc.RpcError) as caught:
        registry_pb2_grpc.RegistryStub(channel).GetModelSpec(
            registry_pb2.GetModelSpecRequest(model=good_model)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def _write_csv(path: Path, rows: int, seed: int) -> None:
    lines = ["alcohol,acidity,colour,target"]
    for i in range(rows):
        colour = "" if i % 11 == 0 else ("red" if (i + seed) % 2 else "white")
        lines.append(f"{10 + (i * seed) % 5 + 0.25},{i % 7},{colour},{(i + seed) % 3}")
    path.write_text("\n".join(lines) + "\n")


def test_data_commit_then_list_and_show(registry, tmp_path, jaeger_url):
    dataset = f"cli-data-{uuid.uuid4().hex[:8]}"
    first = tmp_path / "wine.csv"
    _write_csv(first, 120, seed=1)
    committed = as_json(
        mlops(
            registry, "--json", "data", "commit", str(first), "--dataset", dataset, "--label", "source=test"
        )
    )
    sha = hashlib.sha256(first.read_bytes()).hexdigest()
    version = committed["datasetVersion"]
    assert committed["created"] is True
    assert version["version"] == "1"
    assert version["sha256"] == sha
    assert version["uri"].endswith(f"datasets/{dataset}/{sha}/wine.csv")
    assert version["rowCount"] == "120"
    assert [(c["name"], c["type"], c["nullable"]) for c in version["columns"]] == [
        ("alcohol", "float64", False),
        ("acidity", "int64", False),
        ("colour", "string", True),
        ("target", "int64", False),
    ]
    assert version["labels"] == {"source": "test"}
    assert version["sourceEventId"] == committed["eventId"]
    assert len(committed["traceId"]) == 32

    second_dir = tmp_path / "next"
    second_dir.mkdir()
    second = second_dir / "wine.csv"
    _write_csv(second, 150, seed=2)
    human = ok(mlops(registry, "data", "commit", str(second), "--dataset", dataset, "--committed-by", "etl"))
    assert f"{dataset} v2: new version" in human.stdout
    assert "parent  v1" in human.stdout

    again = as_json(mlops(registry, "--json", "data", "commit", str(first), "--dataset", dataset))
    assert again["created"] is False and again["datasetVersion"]["version"] == "1"
    assert again["eventId"] == committed["eventId"]  # the same commit keeps its event id

    listed = as_json(mlops(registry, "--json", "data", "list"))
    assert any(d["name"] == dataset and d["latestVersion"] == "2" for d in listed["datasets"])
    versions = as_json(mlops(registry, "--json", "data", "list", dataset))["versions"]
    assert [v["version"] for v in versions] == ["2", "1"]
    assert versions[0]["parentSha256"] == sha and versions[0]["committedBy"] == "user:admin"
    paged = as_json(mlops(registry, "--json", "data", "list", dataset, "--limit", "1"))
    assert len(paged["versions"]) == 1 and paged["nextPageToken"]

    shown = ok(mlops(registry, "data", "show", f"{dataset}@1")).stdout
    assert sha in shown and "colour" in shown and "source=test" in shown
    assert as_json(mlops(registry, "--json", "data", "show", dataset))["version"] == "2"
    assert as_json(mlops(registry, "--json", "data", "show", f"{dataset}@{sha}"))["version"] == "1"
    missing = mlops(registry, "data", "show", f"{dataset}@9")
    assert missing.returncode == 3 and "error:" in missing.stderr

    # One trace: the CLI's span, its S3 and gRPC calls, the registry's side, and its announcement of
    # the version (the registry alone records data; the CLI publishes nothing).
    trace_id = committed["traceId"]
    wanted = {
        ("mlops-cli", "mlops data commit"),
        ("mlops-cli", "/mlops.registry.v1.Registry/RecordDatasetVersion"),
        ("mlops-registry", "/mlops.registry.v1.Registry/RecordDatasetVersion"),
        ("mlops-registry", "publish mlops.dataset.recorded"),
    }
    deadline = time.monotonic() + 30
    seen: set[tuple[str, str]] = set()
    spans = []
    while time.monotonic() < deadline and not wanted <= seen:
        spans = jaeger_trace(jaeger_url, trace_id)
        seen = {(span.service, span.name) for span in spans}
        time.sleep(0.5)
    assert wanted <= seen, f"missing {wanted - seen}; seen {sorted(seen)}"
    assert any(span.service == "mlops-cli" and span.name.startswith("S3.") for span in spans)
    assert not any(span.service == "mlops-cli" and span.name.startswith("publish ") for span in spans)


def _register_versions(registry: str, model: str, count: int) -> str:
    """What the trainer does: a run with per-epoch metrics, then model versions."""
    with open_sync_channel(registry) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        run = stub.CreateRun(
            registry_pb2.CreateRunRequest(
                run_id=f"run-{uuid.uuid4().hex[:12]}",
                model=model,
                spec_version=1,
                dataset="wine",
                dataset_version=1,
                params={"epochs": "2"},
            )
        )
        stub.LogRunMetrics(
            registry_pb2.LogRunMetricsRequest(
                run_id=run.run_id,
                epochs=[
                    registry_pb2.EpochMetrics(epoch=1, metrics={"train_loss": 0.9, "val_accuracy": 0.7}),
                    registry_pb2.EpochMetrics(epoch=2, metrics={"train_loss": 0.5, "val_accuracy": 0.8}),
                ],
            )
        )
        stub.FinishRun(
            registry_pb2.FinishRunRequest(
                run_id=run.run_id, status=registry_pb2.RUN_STATUS_SUCCEEDED, metrics={"val_accuracy": 0.8}
            )
        )
        for index in range(count):
            sha = hashlib.sha256(f"{model}-{index}".encode()).hexdigest()
            stub.RegisterModelVersion(
                registry_pb2.RegisterModelVersionRequest(
                    model=model,
                    run_id=run.run_id if index == 0 else f"{run.run_id}-{index}",
                    spec_version=1,
                    dataset="wine",
                    dataset_version=1,
                    artifact_uri=f"s3://mlops/models/{model}/{sha}/model.onnx",
                    artifact_sha256=sha,
                    signature=registry_pb2.ModelSignature(
                        inputs=[registry_pb2.TensorSpec(name="input", datatype="FP32", shape=[-1, 3])],
                        feature_names=["alcohol", "acidity", "sugar"],
                        class_labels=["0", "1"],
                        task="classification",
                    ),
                    metrics={"accuracy": 0.9 + index / 100},
                    tags={"team": "cli"},
                )
            )
    return run.run_id


def test_aliases_models_and_runs(registry, model, tmp_path):
    ok(mlops(registry, "apply", "-f", "-", stdin=spec_text(model)))
    run_id = _register_versions(registry, model, 2)

    assert (
        "(new alias)"
        in ok(mlops(registry, "alias", "set", model, "production", "1", "--reason", "first")).stdout
    )
    between = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    moved = as_json(mlops(registry, "--json", "alias", "set", model, "production", "2", "--actor", "ops"))
    assert moved["changed"] is True and moved["previousVersion"] == "1"
    unchanged = ok(mlops(registry, "alias", "set", model, "production", "2")).stdout
    assert "nothing changed" in unchanged

    shown = as_json(mlops(registry, "--json", "models", "show", f"{model}@production"))
    assert shown["version"] == "2" and "production" in shown["aliases"]
    human = ok(mlops(registry, "models", "show", f"{model}@1")).stdout
    assert "alcohol, acidity, sugar" in human and "accuracy" in human and "team" in human
    assert mlops(registry, "models", "show", f"{model}@staging").returncode == 3
    assert mlops(registry, "models", "show", "no-such-model").returncode == 3
    assert mlops(registry, "models", "show", f"{model}@").returncode == 2

    history = as_json(mlops(registry, "--json", "alias", "history", model))
    assert [(c["fromVersion"], c["toVersion"]) for c in history["changes"]] == [("1", "2"), ("0", "1")]
    assert history["changes"][0]["actor"] == "user:admin" and history["changes"][1]["reason"] == "first"
    at = as_json(
        mlops(registry, "--json", "alias", "history", model, "--alias", "production", "--at", between)
    )
    assert [(a["alias"], a["version"]) for a in at["aliasesAt"]] == [("production", "1")]
    assert "aliases of" in ok(mlops(registry, "alias", "history", model, "--at", between)).stdout

    versions = as_json(mlops(registry, "--json", "models", "list", model))["modelVersions"]
    assert [v["version"] for v in versions] == ["2", "1"]
    assert model in ok(mlops(registry, "models", "list", "--limit", "0")).stdout
    lineage = ok(mlops(registry, "models", "lineage", f"{model}@1")).stdout
    assert f"{model} v1" in lineage and run_id in lineage
    assert (
        as_json(mlops(registry, "--json", "models", "lineage", f"{model}@2"))["modelVersion"]["version"]
        == "2"
    )

    runs = as_json(mlops(registry, "--json", "runs", "list", "--model", model, "--status", "succeeded"))[
        "runs"
    ]
    assert [r["runId"] for r in runs] == [run_id]
    run = ok(mlops(registry, "runs", "show", run_id)).stdout
    epochs = run.split("metrics per epoch")[1]
    assert "train_loss" in epochs and "val_accuracy" in epochs
    rows = [[cell.strip() for cell in line.split("│")] for line in epochs.splitlines() if "│" in line]
    assert rows == [["1", "0.9", "0.7"], ["2", "0.5", "0.8"]]
    assert as_json(mlops(registry, "--json", "runs", "show", run_id))["history"][1]["epoch"] == 2
    assert mlops(registry, "runs", "show", "no-such-run").returncode == 3

    removed = as_json(mlops(registry, "--json", "alias", "rm", model, "production"))
    assert removed["deleted"] is True and removed["previousVersion"] == "2"
    assert "does not exist" in ok(mlops(registry, "alias", "rm", model, "production")).stdout
    assert mlops(registry, "models", "show", f"{model}@production").returncode == 3


def test_an_unreachable_registry_exits_5():
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        result = mlops(address, "--timeout", "5", "data", "list")
    assert result.returncode == 5, result.stderr
    assert "error:" in result.stderr
