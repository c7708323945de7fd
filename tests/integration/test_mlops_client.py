"""mlops_client against a real registry: the registry's servicer in this process on a free port, secured as
the stack's services are (TLS, mutual TLS, tokens), on the stack's PostgreSQL and S3.

The client is synchronous: each scenario runs in a thread while the server serves on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from pathlib import Path

import mlops_client
import numpy as np
import pytest
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlops.grpc import GrpcServer
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.settings import ArtifactSettings, GrpcServerSettings
from mlops.store import open_store
from services.registry.__main__ import MIGRATIONS
from services.registry.core import RegistryCore
from services.registry.datasets import DatasetChecker
from services.registry.servicer import RegistryServicer
from services.registry.settings import RegistrySettings
from services.registry.tables import SCHEMA

CLIENTS = Path(os.environ.get("MLOPS_STACK_DIR", Path(__file__).resolve().parents[2] / ".stack")) / "clients"


@pytest.fixture(scope="module")
async def served(database):
    """(address, core): the registry with its artifact store and data set checker, as the service runs it."""
    from mlops.db import migrate

    await migrate(database, MIGRATIONS, SCHEMA)
    store = open_store(ArtifactSettings())
    core = RegistryCore(
        database,
        Outbox(SCHEMA, source="mlops-client-tests"),
        RegistrySettings(),
        DatasetChecker(store),
        store=store,
    )
    server = GrpcServer(GrpcServerSettings(port=0))
    server.add(
        lambda s: registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(core), s),
        "mlops.registry.v1.Registry",
    )
    port = await server.start()
    await server.set_serving()
    yield f"127.0.0.1:{port}", core, store
    await server.stop()


@pytest.fixture(scope="module")
async def wine_dataset(served):
    """The wine data set scikit-learn ships, committed under a fresh name: (name, version, X, y)."""
    _, core, store = served
    bunch = load_wine(as_frame=True)
    frame = bunch.frame
    name = f"wine-client-{uuid.uuid4().hex[:8]}"
    data = frame.to_csv(index=False).encode()
    ref = await store.put_bytes(f"datasets/{name}", "data.csv", data)
    recorded = await core.datasets.record_dataset_version(
        pb.RecordDatasetVersionRequest(
            dataset=name, uri=ref.uri, sha256=ref.sha256, format="csv", committed_by="tests"
        )
    )
    features = frame.drop(columns=["target"]).to_numpy(dtype=np.float32)
    return name, recorded.dataset_version.version, features, frame["target"].to_numpy()


async def test_a_run_logs_params_metrics_tags_files_and_a_model(served, wine_dataset, tmp_path):
    address, _, _ = served
    dataset, dataset_version, features, target = wine_dataset
    model_name = f"wine-client-{uuid.uuid4().hex[:8]}"
    report = tmp_path / "report.txt"
    report.write_text("confusion matrix\n")

    def scenario():
        with mlops_client.Client(address) as client:
            with client.start_run(
                experiment=model_name,
                params={"C": 1.0},
                tags={"team": "wine"},
                dataset=f"{dataset}@{dataset_version}",
            ) as run:
                run.log_param("max_iter", 500)
                for step, loss in enumerate((0.9, 0.5, 0.3), start=1):
                    run.log_metric("loss", loss, step=step)
                    run.log_metrics({"accuracy": 1 - loss / 2}, step=step)
                run.log_metric("loss", 0.25)  # no step: the one after its last
                run.set_tag("stage", "experiment")
                plot = run.log_artifact(b"\x89PNG fake", path="plots/loss.png")
                run.log_artifact(report)
                model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
                    features, target
                )
                version = run.log_model(model, name=model_name, label="target", sample=features[:5])
            return (
                client.get_run(run.run_id),
                version,
                plot,
                client.download_model(model_name, version.version),
            )

    finished, version, plot, onnx_bytes = await asyncio.to_thread(scenario)

    assert (
        finished.status == "SUCCEEDED" and finished.source == "client" and finished.experiment == model_name
    )
    assert finished.params == {"C": "1.0", "max_iter": "500"}
    assert finished.tags == {"team": "wine", "stage": "experiment"}
    assert [(m.step, m.value) for m in finished.history["loss"]] == [(1, 0.9), (2, 0.5), (3, 0.3), (4, 0.25)]
    assert [m.step for m in finished.history["accuracy"]] == [1, 2, 3]
    assert finished.metrics == {"loss": 0.25, "accuracy": pytest.approx(0.85)}
    assert sorted(a.path for a in finished.artifacts) == ["plots/loss.png", "report.txt"]
    assert plot.sha256 == hashlib.sha256(b"\x89PNG fake").hexdigest()
    assert (finished.dataset, finished.dataset_version) == (dataset, dataset_version)

    assert version.created and version.origin == "external" and version.run_id == finished.run_id
    assert finished.model_version == version.version
    assert (version.dataset, version.dataset_version) == (dataset, dataset_version)
    assert [t.name for t in version.signature.inputs] == ["input"]
    assert version.signature.task == "classification"
    assert hashlib.sha256(onnx_bytes).hexdigest() == version.artifact_sha256


async def test_versions_aliases_downloads_and_idempotent_registration(served, wine_dataset, tmp_path):
    address, core, _ = served
    dataset, _, features, target = wine_dataset
    model_name = f"wine-client-{uuid.uuid4().hex[:8]}"
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(features, target)
    data = mlops_client.to_onnx(model)

    def register():
        with mlops_client.Client(address) as client:
            first = client.register_model(model_name, data, dataset=dataset, label="target", tags={"k": "v"})
            again = client.register_model(model_name, data, dataset=dataset, label="target")
            return first, again

    first, again = await asyncio.to_thread(register)
    assert first.created and again.created is False and again.version == first.version
    assert first.tags == {"k": "v"}
    await core.aliases.set_alias(
        pb.SetAliasRequest(
            model=model_name, alias="staging", version=first.version, actor="tests", reason="client test"
        )
    )

    def read():
        with mlops_client.Client(address) as client:
            alias = client.get_alias(model_name, "staging")
            by_alias = client.get_model_version(model_name, alias="staging")
            latest = client.get_model_version(model_name)
            written = client.download_model(model_name, alias="staging", path=tmp_path)
            return alias, by_alias, latest, written

    alias, by_alias, latest, written = await asyncio.to_thread(read)
    assert (alias.name, alias.alias, alias.version, alias.updated_by, alias.reason) == (
        model_name,
        "staging",
        first.version,
        "tests",
        "client test",
    )
    assert by_alias.version == latest.version == first.version and "staging" in by_alias.aliases
    assert written == tmp_path / f"{model_name}-staging.onnx" and written.read_bytes() == data


async def test_a_failing_block_fails_the_run_with_the_exception(served):
    address, _, _ = served
    experiment = f"client-fail-{uuid.uuid4().hex[:8]}"

    def scenario():
        with mlops_client.Client(address) as client:
            try:
                with client.start_run(experiment=experiment) as run:
                    run.log_metric("loss", 1.0, step=1)
                    raise RuntimeError("the data went missing")
            except RuntimeError:
                pass
            with client.start_run(experiment=experiment) as other:
                other.log_metric("loss", 0.5, step=1)
            return client.get_run(run.run_id), client.search_runs(experiment), other.run_id

    failed, listed, other_id = await asyncio.to_thread(scenario)
    assert failed.status == "FAILED" and failed.error == "RuntimeError: the data went missing"
    assert failed.metrics == {"loss": 1.0}
    assert [r.run_id for r in listed] == [other_id, failed.run_id]  # newest first
    assert [r.status for r in listed] == ["SUCCEEDED", "FAILED"]


async def test_errors_are_typed_with_the_registrys_message(served, wine_dataset):
    address, _, _ = served
    dataset, _, _, _ = wine_dataset

    def scenario():
        caught = {}
        with mlops_client.Client(address) as client:
            for key, call in {
                "run": lambda: client.get_run(f"missing-{uuid.uuid4().hex}"),
                "version": lambda: client.get_model_version(f"none-{uuid.uuid4().hex[:8]}", version=3),
                "alias": lambda: client.get_alias(f"none-{uuid.uuid4().hex[:8]}", "champion"),
                "not onnx": lambda: client.register_model(
                    "wine-garbage", b"not a model", dataset=dataset, label="target"
                ),
            }.items():
                try:
                    call()
                except mlops_client.MlopsError as error:
                    caught[key] = error
        viewer = mlops_client.Client(
            address,
            token=(CLIENTS / "viewer.token").read_text().strip(),
            cert=CLIENTS / "viewer.pem",
            key=CLIENTS / "viewer.key",
        )
        try:
            viewer.start_run(experiment="wine")
        except mlops_client.MlopsError as error:
            caught["viewer"] = error
        finally:
            viewer.close()
        return caught

    caught = await asyncio.to_thread(scenario)
    assert isinstance(caught["run"], mlops_client.NotFound) and "missing-" in caught["run"].message
    assert isinstance(caught["version"], mlops_client.NotFound)
    assert isinstance(caught["alias"], mlops_client.NotFound) and "champion" in caught["alias"].message
    assert isinstance(caught["not onnx"], mlops_client.InvalidArgument) and caught["not onnx"].message
    assert isinstance(caught["viewer"], mlops_client.PermissionDenied), caught["viewer"]


async def test_lightgbm_and_torch_models_register_from_the_client(served, wine_dataset):
    import lightgbm
    import torch

    address, _, _ = served
    dataset, dataset_version, features, target = wine_dataset
    booster = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(features, target)
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(13, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3), torch.nn.Softmax(1)
    )
    names = {kind: f"wine-client-{kind}-{uuid.uuid4().hex[:6]}" for kind in ("lgbm", "torch")}

    def scenario():
        with mlops_client.Client(address) as client, client.start_run(experiment=names["lgbm"]) as run:
            return (
                run.log_model(
                    booster, name=names["lgbm"], dataset=dataset, label="target", sample=features[:5]
                ),
                client.register_model(
                    names["torch"],
                    module,
                    dataset=f"{dataset}@{dataset_version}",
                    label="target",
                    sample=features[:5],
                    output_names=["probabilities"],
                ),
            )

    from_lightgbm, from_torch = await asyncio.to_thread(scenario)
    for version in (from_lightgbm, from_torch):
        assert version.created and version.origin == "external"
        assert version.signature.task == "classification"
        assert [t.name for t in version.signature.inputs] == ["input"]
        assert version.signature.feature_names == [
            c for c in load_wine(as_frame=True).frame.columns if c != "target"
        ]
