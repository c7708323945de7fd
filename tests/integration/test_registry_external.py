"""Models trained outside the platform, registered with RegisterModel (over gRPC and with `mlops models
register`), downloaded back, announced as trained; runs logged from outside with their tags, params
and files. Against a registry served in process with the stack's PostgreSQL, S3 and Kafka."""

# The file_registry fixture, imported from registry_helpers: pytest hands it to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from mlops.events.v1 import common_pb2, training_pb2
from mlops.grpc import open_channel
from mlops.profile import ReferenceProfile
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.settings import GrpcClientSettings
from tests.integration.bus_helpers import raw_reader, read_until
from tests.integration.conftest import TEST_TOPIC_PREFIX
from tests.integration.registry_helpers import (
    download_bytes,
    file_registry,  # noqa: F401 - a fixture
    record_frame,
    register_bytes,
)

ROOT = Path(__file__).resolve().parents[2]


def wine_model() -> tuple[object, bytes]:
    """The wine data set (a frame with its `target`) and a scikit-learn classifier of it in ONNX
    (skl2onnx's output_label and a ZipMap of probabilities)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression

    frame = load_wine(as_frame=True).frame
    x = frame.drop(columns="target").to_numpy(dtype=np.float32)
    model = LogisticRegression(max_iter=5000).fit(x, frame["target"])
    return frame, to_onnx(model, x[:1]).SerializeToString()


def cancer_lightgbm() -> tuple[object, bytes]:
    """The breast cancer data set and a LightGBM classifier of it, converted with onnxmltools."""
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    x = frame.drop(columns="target").to_numpy(dtype=np.float32)
    model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(x, frame["target"])
    onnx_model = convert_lightgbm(
        model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))], target_opset=15, zipmap=False
    )
    return frame, onnx_model.SerializeToString()


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def mlops(address: str, *args: str) -> tuple[int, str, str]:
    """The CLI in its own process (the registry serves in this test's event loop, which must keep running)."""
    env = dict(os.environ, COLUMNS="200")
    env.pop("OTEL_SERVICE_NAME", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mlops.cli", "--registry", address, *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=180)
    return process.returncode or 0, out.decode(), err.decode()


async def test_a_scikit_learn_model_is_registered_with_a_spec_made_for_it_and_announced_as_trained(
    file_registry, kafka, unique
):
    stub, store, _ = file_registry
    frame, model = wine_model()
    dataset = await record_frame(stub, store, f"wine-{unique}", frame)
    name = f"wine-sk-{unique}"
    async with raw_reader(kafka, TEST_TOPIC_PREFIX + "mlops.model.trained") as trained:
        # small chunks: the bytes are joined in order across many messages
        reply = await register_bytes(
            stub,
            model,
            chunk=4096,
            model=name,
            dataset=dataset.dataset,
            label="target",
            tags={"framework": "sklearn"},
            file_name="wine.onnx",
            sha256=hashlib.sha256(model).hexdigest(),
            size_bytes=len(model),
        )
        record = await read_until(trained, lambda r: r.key == name.encode())
    version = reply.model_version
    assert reply.created and version.version == 1 and version.origin == "external"
    assert (version.dataset, version.dataset_version, version.dataset_sha256) == (
        dataset.dataset,
        dataset.version,
        dataset.sha256,
    )
    assert version.artifact_sha256 == hashlib.sha256(model).hexdigest()
    assert version.artifact_uri.endswith(f"models/{name}/{version.artifact_sha256}/model.onnx")
    assert version.signature.task == "classification"
    assert list(version.signature.class_labels) == ["0", "1", "2"]
    assert list(version.signature.feature_names) == [c for c in frame.columns if c != "target"]
    assert dict(version.tags) == {"framework": "sklearn"}

    spec = await stub.GetModelSpec(pb.GetModelSpecRequest(model=name))
    assert spec.spec.spec.training.external
    assert (spec.spec.spec.dataset, spec.spec.spec.label, spec.spec.spec.task) == (
        dataset.dataset,
        "target",
        "classification",
    )
    assert version.spec_version == spec.version

    event = training_pb2.ModelTrained.FromString(record.value)
    assert event.trigger == common_pb2.TRAINING_TRIGGER_EXTERNAL
    assert (event.version, event.artifact_uri, event.profile_uri) == (
        1,
        version.artifact_uri,
        version.profile_uri,
    )
    assert list(event.class_labels) == ["0", "1", "2"]
    profile = ReferenceProfile.from_json(await store.get_bytes(version.profile_uri, version.profile_sha256))
    assert profile.row_count == len(frame) and sum(profile.prediction.class_counts) == len(frame)

    # The same bytes again: the same version, nothing new announced.
    again = await register_bytes(stub, model, model=name, dataset=dataset.dataset, label="target")
    assert not again.created and again.model_version.version == 1
    versions = await stub.ListModelVersions(pb.ListModelVersionsRequest(model=name))
    assert [v.version for v in versions.model_versions] == [1]

    data, first = await download_bytes(
        stub, pb.DownloadArtifactRequest(model_version={"model": name, "version": 1})
    )
    assert data == model
    assert (first.sha256, first.size_bytes) == (version.artifact_sha256, len(model))


async def test_what_is_wrong_with_a_file_or_its_header_is_named(file_registry, unique):
    stub, store, _ = file_registry
    frame, model = wine_model()
    dataset = await record_frame(stub, store, f"wine-bad-{unique}", frame)
    name = f"wine-bad-{unique}"

    not_onnx = await refused(
        register_bytes(
            stub, b"PK\x03\x04 a zip, not a model", model=name, dataset=dataset.dataset, label="target"
        )
    )
    assert not_onnx.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ONNX" in not_onnx.details()

    no_label = await refused(
        register_bytes(stub, model, model=name, dataset=dataset.dataset, label="quality")
    )
    assert no_label.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "label 'quality' is not a column" in no_label.details()

    no_dataset = await refused(register_bytes(stub, model, model=name))
    assert no_dataset.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "--dataset" in no_dataset.details()

    cut = await refused(
        register_bytes(
            stub, model[:-10], model=name, dataset=dataset.dataset, label="target", size_bytes=len(model)
        )
    )
    assert cut.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the header announced" in cut.details()

    fewer_columns = frame.drop(columns=["alcohol"])
    narrow = await record_frame(stub, store, f"wine-narrow-{unique}", fewer_columns)
    mismatch = await refused(register_bytes(stub, model, model=name, dataset=narrow.dataset, label="target"))
    assert mismatch.code() == grpc.StatusCode.INVALID_ARGUMENT

    regression = pb.ModelSpec(api_version="mlops/v1", kind="ModelSpec")
    regression.spec.dataset, regression.spec.task, regression.spec.label = (
        dataset.dataset,
        "regression",
        "target",
    )
    wrong_task = await refused(register_bytes(stub, model, model=name, spec=regression))
    assert wrong_task.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is a classification model, but the spec" in wrong_task.details()

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetModelSpec(pb.GetModelSpecRequest(model=name))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # nothing half-registered


async def test_a_lightgbm_model_is_registered_and_downloaded_with_the_cli(file_registry, unique, tmp_path):
    stub, store, address = file_registry
    frame, model = cancer_lightgbm()
    dataset = await record_frame(stub, store, f"cancer-{unique}", frame)
    name = f"cancer-lgbm-{unique}"
    path = tmp_path / "cancer.onnx"
    path.write_bytes(model)

    code, out, err = await mlops(
        address, "models", "register", name, str(path), "--dataset", f"{dataset.dataset}@{dataset.version}",
        "--label", "target", "--tag", "framework=lightgbm", "--description", "gradient boosting",
    )  # fmt: skip
    assert code == 0, err
    assert f"registered {name} v1" in out and "evaluator" in out
    version = await stub.GetModelVersion(pb.GetModelVersionRequest(model=name, version=1))
    assert version.origin == "external" and version.description == "gradient boosting"
    assert version.signature.task == "classification" and list(version.signature.class_labels) == ["0", "1"]

    code, out, err = await mlops(address, "models", "register", name, str(path), "--dataset", dataset.dataset)
    assert code == 0, err
    assert "already holds these bytes" in out

    target = tmp_path / "back.onnx"
    code, out, err = await mlops(address, "models", "download", name, "-o", str(target))
    assert code == 0, err
    assert target.read_bytes() == model

    code, out, err = await mlops(address, "models", "register", name, str(tmp_path / "missing.onnx"))
    assert code != 0


async def test_a_run_logged_from_outside_keeps_its_tags_params_and_files(file_registry, unique):
    stub, _, address = file_registry
    run = await stub.CreateRun(
        pb.CreateRunRequest(
            model=f"notebook-{unique}", source="client", params={"lr": "0.1"}, tags={"author": "ana"}
        )
    )
    assert run.source == "client"
    run = await stub.UpdateRun(
        pb.UpdateRunRequest(
            run_id=run.run_id, params={"depth": "3"}, set_tags={"stage": "try"}, remove_tags=["author"]
        )
    )
    assert dict(run.params) == {"lr": "0.1", "depth": "3"} and dict(run.tags) == {"stage": "try"}
    changed = await refused(stub.UpdateRun(pb.UpdateRunRequest(run_id=run.run_id, params={"lr": "0.2"})))
    assert changed.code() == grpc.StatusCode.INVALID_ARGUMENT

    report = b"epoch,loss\n" + b"".join(f"{i},{1 / (i + 1)}\n".encode() for i in range(50_000))

    async def parts(path: str, data: bytes):
        yield pb.UploadRunArtifactRequest(
            header={"run_id": run.run_id, "path": path, "size_bytes": len(data)}
        )
        for offset in range(0, len(data), 100_000):
            yield pb.UploadRunArtifactRequest(chunk=data[offset : offset + 100_000])

    stored = await stub.UploadRunArtifact(parts("reports/loss.csv", report))
    assert (stored.sha256, stored.size_bytes) == (hashlib.sha256(report).hexdigest(), len(report))
    again = await stub.UploadRunArtifact(parts("reports/loss.csv", report))
    assert again.created_at == stored.created_at  # the same file: kept as it was
    escape = await refused(stub.UploadRunArtifact(parts("../../etc/passwd", b"x")))
    assert escape.code() == grpc.StatusCode.INVALID_ARGUMENT

    shown = await stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
    assert [a.path for a in shown.artifacts] == ["reports/loss.csv"]
    data, _ = await download_bytes(
        stub, pb.DownloadArtifactRequest(run_artifact={"run_id": run.run_id, "path": "reports/loss.csv"})
    )
    assert data == report
    absent = await refused(
        download_bytes(stub, pb.DownloadArtifactRequest(run_artifact={"run_id": run.run_id, "path": "x.png"}))
    )
    assert absent.code() == grpc.StatusCode.NOT_FOUND and "reports/loss.csv" in absent.details()

    code, out, err = await mlops(address, "runs", "show", run.run_id)
    assert code == 0, err
    for text in ("client", "stage", "depth", "reports/loss.csv"):
        assert text in out


async def test_a_viewer_may_download_but_not_register(file_registry, unique):
    stub, store, address = file_registry
    frame, model = wine_model()
    dataset = await record_frame(stub, store, f"wine-acl-{unique}", frame)
    name = f"wine-acl-{unique}"
    await register_bytes(stub, model, model=name, dataset=dataset.dataset, label="target")
    clients = GrpcClientSettings().ca_file.parent
    viewer = GrpcClientSettings(
        ca_file=clients / "ca.pem",
        cert_file=clients / "viewer.pem",
        key_file=clients / "viewer.key",
        token=None,
    )
    async with open_channel(address, security=viewer) as channel:
        as_viewer = registry_pb2_grpc.RegistryStub(channel)
        error = await refused(register_bytes(as_viewer, model + b"\x00", model=name))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "RegisterModel" in error.details()
        data, _ = await download_bytes(as_viewer, pb.DownloadArtifactRequest(model_version={"model": name}))
        assert data == model
