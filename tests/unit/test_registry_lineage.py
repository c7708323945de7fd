"""Lineage and retrain requests, assembled from the other aggregates; here those are stand-ins holding
plain records, so the assembly's rules are checked without a database."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest

from mlops.errors import InvalidArgument, NotFound
from mlops.events.v1 import common_pb2, monitoring_pb2, training_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.core.lineage import Lineage, trained_on, version_request
from services.registry.core.retraining import Retraining
from services.registry.settings import RegistrySettings

SETTINGS = RegistrySettings(max_page_size=7)


class Versions:
    def __init__(self, *held: pb.ModelVersion) -> None:
        self.held = held
        self.asked: list[pb.GetModelVersionRequest] = []

    async def get_model_version(self, request: pb.GetModelVersionRequest) -> pb.ModelVersion:
        self.asked.append(request)
        for version in self.held:
            if version.model == request.model and (not request.version or version.version == request.version):
                return version
        raise NotFound(f"model {request.model!r} has no version {request.version}")


class Specs:
    def __init__(self, *held: pb.ModelSpecVersion) -> None:
        self.held = held

    async def get_model_spec(self, request: pb.GetModelSpecRequest) -> pb.ModelSpecVersion:
        for spec in reversed(self.held):
            if spec.model == request.model and (not request.version or spec.version == request.version):
                return spec
        raise NotFound(f"model {request.model!r} has no spec")


class Datasets:
    def __init__(self, *held: pb.DatasetVersion) -> None:
        self.held = held
        self.asked = 0

    async def get_dataset_version(self, request: pb.GetDatasetVersionRequest) -> pb.DatasetVersion:
        self.asked += 1
        for version in reversed(self.held):
            if version.dataset != request.dataset:
                continue
            if request.WhichOneof("selector") == "sha256":
                if version.sha256 == request.sha256:
                    return version
            elif not request.version or version.version == request.version:
                return version
        raise NotFound(f"data set {request.dataset!r} has no such version")


class Runs:
    def __init__(self, *held: pb.Run) -> None:
        self.held = {run.run_id: run for run in held}
        self.asked: list[pb.GetRunRequest] = []

    async def get_run(self, request: pb.GetRunRequest) -> pb.Run:
        self.asked.append(request)
        if request.run_id not in self.held:
            raise NotFound(f"run {request.run_id!r} does not exist")
        return self.held[request.run_id]


class Evaluations:
    def __init__(self, *held: pb.Evaluation) -> None:
        self.held = held
        self.asked: list[pb.ListEvaluationsRequest] = []

    async def list_evaluations(self, request: pb.ListEvaluationsRequest) -> pb.ListEvaluationsResponse:
        self.asked.append(request)
        return pb.ListEvaluationsResponse(
            evaluations=[e for e in self.held if (e.model, e.version) == (request.model, request.version)]
        )


class Deployments:
    def __init__(self, deployments=(), events=()) -> None:
        self.held = deployments
        self.events = events
        self.asked: list[pb.ListDeploymentsRequest] = []

    async def list_deployments(self, request: pb.ListDeploymentsRequest) -> pb.ListDeploymentsResponse:
        self.asked.append(request)
        return pb.ListDeploymentsResponse(deployments=list(self.held))

    async def monitor_events_of(self, model: str, version: int):
        return [e for e in self.events if (e.model, e.version) == (model, version)]


class Aliases:
    def __init__(self, *changes: pb.AliasChange) -> None:
        self.changes = changes

    async def changes_of_version(self, model: str, version: int) -> list[pb.AliasChange]:
        return [c for c in self.changes if c.model == model and version in (c.from_version, c.to_version)]


def data(version: int, parent: int = 0) -> pb.DatasetVersion:
    return pb.DatasetVersion(dataset="wine", version=version, sha256=f"{version:064x}", parent_version=parent)


def chain(length: int) -> list[pb.DatasetVersion]:
    """Versions 1..length of one data set, each the parent of the next."""
    return [data(v, v - 1) for v in range(1, length + 1)]


def lineage_of(version: pb.ModelVersion, **parts) -> Lineage:
    return Lineage(
        SETTINGS,
        versions=parts.get("versions", Versions(version)),
        specs=parts.get("specs", Specs()),
        datasets=parts.get("datasets", Datasets()),
        runs=parts.get("runs", Runs()),
        evaluations=parts.get("evaluations", Evaluations()),
        deployments=parts.get("deployments", Deployments()),
        aliases=parts.get("aliases", Aliases()),
    )


def test_the_lineage_request_names_the_version_by_alias_number_or_latest():
    assert version_request(pb.GetLineageRequest(model="wine", alias="production")).alias == "production"
    assert version_request(pb.GetLineageRequest(model="wine", version=3)).version == 3
    latest = version_request(pb.GetLineageRequest(model="wine"))
    assert latest.WhichOneof("selector") is None and latest.model == "wine"


def test_the_data_trained_on_is_found_by_number_else_by_sha256():
    by_number = trained_on(pb.ModelVersion(dataset="wine", dataset_version=2, dataset_sha256="a" * 64))
    assert by_number.WhichOneof("selector") == "version" and by_number.version == 2
    by_sha = trained_on(pb.ModelVersion(dataset="wine", dataset_sha256="a" * 64))
    assert by_sha.WhichOneof("selector") == "sha256" and by_sha.sha256 == "a" * 64


async def test_a_lineage_ties_every_part_to_the_version():
    version = pb.ModelVersion(
        model="wine", version=2, spec_version=1, run_id="r1", dataset="wine", dataset_version=3
    )
    drift = monitoring_pb2.DriftDetected(model="wine", version=2, prediction_drift_score=0.4)
    degraded = monitoring_pb2.PerformanceDegraded(model="wine", version=2, metric="accuracy")
    elsewhere = monitoring_pb2.DriftDetected(model="wine", version=1)
    deployments = Deployments([pb.Deployment(rollout_id="ro1")], [drift, degraded, elsewhere])
    evaluations = Evaluations(
        pb.Evaluation(evaluation_id="ev1", model="wine", version=2),
        pb.Evaluation(evaluation_id="ev0", model="wine", version=1),
    )
    runs = Runs(pb.Run(run_id="r1"))
    lineage = await lineage_of(
        version,
        specs=Specs(
            pb.ModelSpecVersion(model="wine", version=1), pb.ModelSpecVersion(model="wine", version=2)
        ),
        datasets=Datasets(*chain(3)),
        runs=runs,
        evaluations=evaluations,
        deployments=deployments,
        aliases=Aliases(
            pb.AliasChange(change_id=9, model="wine", alias="production", from_version=1, to_version=2),
            pb.AliasChange(change_id=8, model="wine", alias="canary", from_version=0, to_version=1),
        ),
    ).get_lineage(pb.GetLineageRequest(model="wine", alias="production"))
    assert lineage.model_version == version
    assert lineage.spec.version == 1, "the spec the version was trained from, not the latest"
    assert lineage.dataset_version.version == 3
    assert [a.version for a in lineage.dataset_ancestors] == [2, 1], "nearest first"
    assert lineage.run.run_id == "r1" and runs.asked[0].include_history, "the run with its epochs"
    assert [e.evaluation_id for e in lineage.evaluations] == ["ev1"]
    assert [d.rollout_id for d in lineage.deployments] == ["ro1"]
    assert [c.change_id for c in lineage.alias_changes] == [9]
    assert list(lineage.drift_events) == [drift] and list(lineage.degradations) == [degraded]
    assert evaluations.asked[0].page_size == deployments.asked[0].page_size == 7, (
        "every one, up to the maximum"
    )


async def test_ancestors_stop_at_the_limit_asked_for_else_a_thousand():
    version = pb.ModelVersion(model="wine", version=1, dataset="wine", dataset_version=6)
    datasets = Datasets(*chain(6))
    lineage = await lineage_of(version, datasets=datasets).get_lineage(
        pb.GetLineageRequest(model="wine", max_dataset_ancestors=2)
    )
    assert [a.version for a in lineage.dataset_ancestors] == [5, 4] and datasets.asked == 3
    deep = pb.ModelVersion(model="wine", version=1, dataset="wine", dataset_version=1_200)
    lineage = await lineage_of(deep, datasets=Datasets(*chain(1_200))).get_lineage(
        pb.GetLineageRequest(model="wine")
    )
    assert len(lineage.dataset_ancestors) == 1_000


async def test_parts_the_registry_no_longer_holds_are_left_out():
    version = pb.ModelVersion(
        model="wine", version=1, spec_version=4, run_id="gone", dataset="wine", dataset_sha256=f"{5:064x}"
    )
    # version 5 names parent 4, which is missing: the walk keeps what it found
    datasets = Datasets(data(5, 4), data(3, 0))
    lineage = await lineage_of(version, datasets=datasets).get_lineage(pb.GetLineageRequest(model="wine"))
    assert not lineage.HasField("spec") and not lineage.HasField("run")
    assert lineage.dataset_version.version == 5 and list(lineage.dataset_ancestors) == []
    missing_data = pb.ModelVersion(model="wine", version=1, dataset="beer", dataset_version=1)
    lineage = await lineage_of(missing_data).get_lineage(pb.GetLineageRequest(model="wine"))
    assert not lineage.HasField("dataset_version")


async def test_a_lineage_of_a_version_the_registry_does_not_hold_is_not_found():
    with pytest.raises(NotFound):
        await lineage_of(pb.ModelVersion(model="wine", version=1)).get_lineage(
            pb.GetLineageRequest(model="wine", version=9)
        )


class Database:
    def __init__(self) -> None:
        self.transactions = 0

    @asynccontextmanager
    async def transaction(self):
        self.transactions += 1
        yield f"tx{self.transactions}"


class Outbox:
    def __init__(self) -> None:
        self.added: list[tuple[object, object]] = []

    async def add(self, session, event) -> str:
        self.added.append((session, event))
        return f"ce-{len(self.added)}"


def retraining(database: Database, outbox: Outbox) -> Retraining:
    spec = pb.ModelSpecVersion(model="wine", version=3)
    spec.spec.spec.dataset = "wine-data"
    held = [pb.DatasetVersion(dataset="wine-data", version=v, sha256=f"{v:064x}") for v in (1, 2)]
    return Retraining(database, outbox, specs=Specs(spec), datasets=Datasets(*held))


async def test_a_retrain_request_states_the_intent_on_the_checked_data_set_version():
    database, outbox = Database(), Outbox()
    reply = await retraining(database, outbox).request_retrain(
        pb.RequestRetrainRequest(model="wine", dataset_version=1, requested_by="user:alice")
    )
    assert (reply.event_id, reply.spec_version, reply.dataset, reply.dataset_version) == (
        "ce-1",
        3,
        "wine-data",
        1,
    )
    ((session, event),) = outbox.added
    assert session == "tx1" and isinstance(event, training_pb2.RetrainRequested)
    assert (event.model, event.dataset_version, event.trigger) == (
        "wine",
        1,
        common_pb2.TRAINING_TRIGGER_MANUAL,
    )
    assert event.reason == "asked for by user:alice" and event.HasField("requested_at")
    latest = await retraining(database, outbox).request_retrain(
        pb.RequestRetrainRequest(model="wine", dataset="wine-data", reason="new labels")
    )
    assert latest.dataset_version == 2 and outbox.added[-1][1].reason == "new labels"


@pytest.mark.parametrize(
    ("request_", "error", "message"),
    [
        (pb.RequestRetrainRequest(), InvalidArgument, "model is required"),
        (pb.RequestRetrainRequest(model="wine", dataset_version=-1), InvalidArgument, "got -1"),
        (
            pb.RequestRetrainRequest(model="wine", dataset="beer"),
            InvalidArgument,
            "trains on data set 'wine-data'",
        ),
        (pb.RequestRetrainRequest(model="beer"), NotFound, "has no spec"),
        (pb.RequestRetrainRequest(model="wine", dataset_version=9), NotFound, "no such version"),
    ],
)
async def test_a_retrain_request_that_fails_a_check_states_nothing(request_, error, message):
    outbox = Outbox()
    with pytest.raises(error, match=message):
        await retraining(Database(), outbox).request_retrain(request_)
    assert outbox.added == []
