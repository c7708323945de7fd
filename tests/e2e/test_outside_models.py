"""Models trained outside the platform, through the running platform's public surfaces only.

A scikit-learn pipeline (converted with skl2onnx, ZipMap outputs) and a LightGBM classifier (converted
with onnxmltools, plain tensors), both trained here on the wine data scikit-learn ships, are
registered with `mlops models register`; the second is gated against the first, canaried and
promoted; an unmodified tritonclient calls it over REST (`tritonclient.http`, port 8000) and gRPC
(`tritonclient.grpc`, port 8001) and gets what onnxruntime computes from the same file; shifted
traffic raises a drift alarm that asks for a new model instead of training one. And a notebook-style
script logs a run with the Python client, which `mlops runs show` finds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import lightgbm
import numpy as np
import onnxruntime as ort
import pytest
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType as LgbmFloat
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlops.demo.loop import EventTail, Traffic, shift_features, wait_ready
from mlops.events.v1 import common_pb2, deployment_pb2, evaluation_pb2, monitoring_pb2, training_pb2
from tests.e2e.conftest import ROOT, mlops
from tests.integration.inference_helpers import TRITON_CLIENT, TritonClient
from tests.integration.triton_scripts import TRITON_HTTP_CLIENT

CLIENTS = Path(os.environ.get("MLOPS_STACK_DIR", ROOT / ".stack")) / "clients"

SPEC = """apiVersion: mlops/v1
kind: ModelSpec
metadata: {{name: {model}}}
spec:
  dataset: {dataset}
  task: classification
  label: target
  training: {{external: true}}
  gate: {{metric: accuracy, min: 0.8, max_regression: 0.2, max_p99_latency_ms: 200}}
  rollout: {{strategy: canary, steps: [50, 100], step_seconds: 3, max_error_rate: 0.05, max_p99_latency_ms: 500, min_requests: 10}}
  monitor: {{window_seconds: 3, method: psi, threshold: 0.2, consecutive_windows: 2, on_drift: retrain, min_samples: 40}}
"""

FOLLOWED = [
    training_pb2.ModelTrained,
    evaluation_pb2.ModelEvaluated,
    deployment_pb2.RolloutProgressed,
    deployment_pb2.ModelDeployed,
    monitoring_pb2.DriftDetected,
    training_pb2.RetrainRequested,
]


def _token(person: str) -> str:
    return (CLIENTS / f"{person}.token").read_text().strip()


def _models(frame, columns: list[str], tmp: Path) -> tuple[Path, Path]:
    features = frame[columns].to_numpy(np.float32)
    target = frame["target"].to_numpy()
    scikit = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(features, target)
    scikit_onnx = to_onnx(scikit, initial_types=[("input", FloatTensorType([None, len(columns)]))])
    booster = lightgbm.LGBMClassifier(n_estimators=40, num_leaves=8, min_child_samples=5, verbose=-1)
    booster.fit(features, target)
    lgbm_onnx = convert_lightgbm(
        booster, initial_types=[("input", LgbmFloat([None, len(columns)]))], zipmap=False, target_opset=15
    )
    paths = tmp / "scikit.onnx", tmp / "lightgbm.onnx"
    paths[0].write_bytes(scikit_onnx.SerializeToString())
    paths[1].write_bytes(lgbm_onnx.SerializeToString())
    return paths


@pytest.mark.timeout(900)
async def test_outside_models_are_registered_gated_canaried_served_and_drift_monitored(unique, tmp_path):
    model, dataset = f"outside-{unique}", f"outsidedata-{unique}"
    frame = load_wine(as_frame=True).frame
    columns = [c for c in frame.columns if c != "target"]
    data = tmp_path / "wine.csv"
    frame.to_csv(data, index=False)
    scikit, lgbm = _models(frame, columns, tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(model=model, dataset=dataset))

    tail = EventTail(FOLLOWED, keys=[model, dataset], since_ms=int(time.time() * 1000) - 1000)
    await tail.start()
    features = frame[columns].to_numpy(np.float32)
    traffic = Traffic(model=model, features=features, labels=[str(v) for v in frame["target"]], rate_per_s=30)
    try:
        mlops("data", "commit", str(data), "--dataset", dataset)
        first = mlops(
            "models",
            "register",
            model,
            str(scikit),
            "--dataset",
            dataset,
            "--label",
            "target",
            "--spec",
            str(spec),
            "--tag",
            "framework=scikit-learn",
        )
        assert first["created"] and first["modelVersion"]["version"] == "1", first
        trained = (await tail.wait_for(training_pb2.ModelTrained, timeout_s=60)).event
        assert trained.version == 1 and trained.trigger == common_pb2.TRAINING_TRIGGER_EXTERNAL
        await tail.wait_for(deployment_pb2.ModelDeployed, lambda e: e.version == 1, timeout_s=240)
        await wait_ready(model, 1)
        shown = mlops("models", "show", f"{model}@1")
        assert shown["origin"] == "external", shown
        outputs = {o["name"]: o for o in shown["signature"]["outputs"]}
        assert {o.get("role") for o in outputs.values()} >= {"label", "probabilities"}, outputs
        traffic.start()

        # The same bytes again: the same version, nothing new announced.
        again = mlops("models", "register", model, str(scikit), "--dataset", dataset)
        assert not again.get("created") and again["modelVersion"]["version"] == "1", again

        second = mlops("models", "register", model, str(lgbm), "--tag", "framework=lightgbm")
        assert second["modelVersion"]["version"] == "2", second
        evaluated = (
            await tail.wait_for(evaluation_pb2.ModelEvaluated, lambda e: e.version == 2, timeout_s=240)
        ).event
        assert evaluated.passed, [g.message for g in evaluated.gates]
        assert evaluated.champion_version == 1
        deployed = (
            await tail.wait_for(deployment_pb2.ModelDeployed, lambda e: e.version == 2, timeout_s=240)
        ).event
        assert deployed.previous_version == 1 and deployed.strategy == "canary"
        steps = [
            s.event.traffic_percent
            for s in tail.seen
            if isinstance(s.event, deployment_pb2.RolloutProgressed) and s.event.candidate_version == 2
        ]
        assert 50 in steps, steps

        await _served_like_onnxruntime(model, lgbm, features[:4], tmp_path)

        # Drift: the alarm asks the model's owners for a new one; nothing is trained.
        traffic.shift = shift_features(
            columns,
            {"alcohol": 2.5, "flavanoids": 2.5, "color_intensity": 2.5, "proline": 2.5},
            features.std(axis=0),
        )
        drift = (await tail.wait_for(monitoring_pb2.DriftDetected, timeout_s=120)).event
        assert drift.version == 2 and drift.new_model_needed
        assert {f.feature for f in drift.features if f.drifted} >= {"alcohol", "proline"}
    finally:
        stats = await traffic.stop()
        await tail.stop()

    assert stats.total_failed == 0, stats.messages
    assert not [s for s in tail.seen if isinstance(s.event, training_pb2.RetrainRequested)]
    assert [s.event.version for s in tail.seen if isinstance(s.event, training_pb2.ModelTrained)] == [1, 2]
    health = mlops("drift", "status", model)
    assert any(v.get("newModelNeededAt") for v in health["versions"]), health


async def _served_like_onnxruntime(model: str, path: Path, rows: np.ndarray, tmp: Path) -> None:
    """tritonclient.http (REST, 8000) and tritonclient.grpc (8001) get what onnxruntime computes."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected_labels, expected_probabilities = session.run(["label", "probabilities"], {"input": rows})
    call = {
        "op": "infer",
        "model": model,
        "version": "2",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape), "data": rows.tolist()}],
    }
    for address, source in (("127.0.0.1:8000", TRITON_HTTP_CLIENT), ("127.0.0.1:8001", TRITON_CLIENT)):
        script = tmp / f"client-{address.rsplit(':', 1)[1]}.py"
        script.write_text(source)
        client = await TritonClient.start(address, script, token=_token("viewer"))
        try:
            answer = await client.call(**call)
        finally:
            await client.close()
        assert answer["ok"], (address, answer)
        assert answer["version"] == "2", (address, answer)
        probabilities = np.array(answer["outputs"]["probabilities"]["data"], np.float32).reshape(
            expected_probabilities.shape
        )
        np.testing.assert_allclose(probabilities, expected_probabilities, rtol=1e-5, atol=1e-6)
        labels = answer["outputs"]["label"]["data"]
        assert [str(v) for v in labels] == [str(v) for v in expected_labels.tolist()], (address, labels)


@pytest.mark.timeout(300)
def test_a_notebook_logs_a_run_with_the_client_and_the_cli_finds_it(unique, tmp_path):
    dataset = f"notebook-{unique}"
    data = tmp_path / "wine.csv"
    example = ROOT / "libs" / "mlops-client" / "examples" / "notebook.py"
    subprocess.run([sys.executable, str(example), "--write-csv", str(data)], check=True, timeout=60)
    mlops("data", "commit", str(data), "--dataset", dataset)
    env = {
        **{k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"},
        # an operator's token on the registry's token listener, as a person's notebook has it
        "MLOPS_REGISTRY_ADDR": "127.0.0.1:50061",
        "MLOPS_TOKEN": _token("operator"),
        "MLOPS_CA_FILE": str(CLIENTS / "ca.pem"),
    }
    ran = subprocess.run(
        [sys.executable, str(example), "--experiment", f"nb-{unique}", "--epochs", "5"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    run_id = next(line.split()[-1] for line in ran.stdout.splitlines() if "mlops runs show" in line)
    shown = mlops("runs", "show", run_id)
    assert shown["runId"] == run_id and shown["source"] == "client", shown
    assert shown["params"]["alpha"] == "0.001" and shown["tags"]["framework"] == "scikit-learn"
    assert [a["path"] for a in shown["artifacts"]] == ["eval/confusion.json"]
    assert len(shown["history"]) == 5
