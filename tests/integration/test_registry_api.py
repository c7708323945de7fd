"""The registry over its gRPC API, against the real PostgreSQL and Kafka: data set versions, bad requests,
specs applied like kubectl, racing registrations, aliases and their ledger, runs and their metrics,
search."""

# The registry fixture, imported from registry_helpers: pytest hands it to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import json_format

from mlops.events.v1 import common_pb2
from mlops.registry.v1 import registry_pb2 as pb
from tests.integration.bus_helpers import raw_reader, read_until
from tests.integration.registry_helpers import (
    DESIGN_SPEC,
    register,
    registry,  # noqa: F401 - fixture
    sha,
    spec_from_yaml,
)


async def test_dataset_versions_are_immutable_and_idempotent_on_sha256(registry, unique):
    stub, _, _ = registry
    name = f"ds-{unique}"
    first = await stub.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(
            dataset=name,
            uri="s3://mlops/x/1.csv",
            sha256=sha("1"),
            format="csv",
            row_count=10,
            committed_by="alice",
        )
    )
    again = await stub.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(
            dataset=name, uri="s3://mlops/x/1.csv", sha256=sha("1"), format="csv", row_count=10
        )
    )
    second = await stub.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(
            dataset=name, uri="s3://mlops/x/2.csv", sha256=sha("2"), format="csv", row_count=12
        )
    )
    assert (first.created, again.created, second.created) == (True, False, True)
    assert again.dataset_version == first.dataset_version
    assert second.dataset_version.version == 2
    assert second.dataset_version.parent_version == 1 and second.dataset_version.parent_sha256 == sha("1")
    by_sha = await stub.GetDatasetVersion(pb.GetDatasetVersionRequest(dataset=name, sha256=sha("1")))
    latest = await stub.GetDatasetVersion(pb.GetDatasetVersionRequest(dataset=name))
    # the ledger records who called (the operator, by certificate), not the name the request typed
    assert (by_sha.version, latest.version, by_sha.committed_by) == (1, 2, "user:admin")
    listed = await stub.ListDatasetVersions(pb.ListDatasetVersionsRequest(dataset=name, page_size=1))
    assert [v.version for v in listed.versions] == [2] and listed.next_page_token
    rest = await stub.ListDatasetVersions(
        pb.ListDatasetVersionsRequest(dataset=name, page_size=1, page_token=listed.next_page_token)
    )
    assert [v.version for v in rest.versions] == [1] and not rest.next_page_token
    datasets = await stub.ListDatasets(pb.ListDatasetsRequest(name_prefix=name))
    assert [(d.name, d.latest_version) for d in datasets.datasets] == [(name, 2)]


async def test_bad_requests_get_invalid_argument_with_a_message(registry, unique):
    stub, _, _ = registry
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RecordDatasetVersion(
            pb.RecordDatasetVersionRequest(
                dataset=f"ds-{unique}", uri="s3://mlops/x.csv", sha256=sha("x"), format="xlsx"
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "format must be one of csv, parquet, got 'xlsx'"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetModelVersion(pb.GetModelVersionRequest(model=f"m-{unique}", alias="production"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == f"model 'm-{unique}' has no alias 'production'"


async def test_specs_apply_like_kubectl_and_bad_specs_name_every_field(registry, unique):
    stub, _, _ = registry
    name = f"wine-{unique}"
    spec = spec_from_yaml(DESIGN_SPEC, name, f"ds-{unique}")
    first = await stub.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec, applied_by="alice"))
    same = await stub.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec))
    assert (first.spec_version, first.changed, same.spec_version, same.changed) == (1, True, 1, False)
    assert first.applied.spec.spec.serving.max_batch_size == 64, "defaults are filled in and stored"
    spec.spec.training.epochs = 40
    changed = await stub.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec))
    assert (changed.spec_version, changed.changed) == (2, True)
    fetched = await stub.GetModelSpec(pb.GetModelSpecRequest(model=name))
    assert fetched.version == 2 and fetched.spec.spec.training.epochs == 40
    listed = await stub.ListModelSpecs(pb.ListModelSpecsRequest(dataset=f"ds-{unique}"))
    assert [(s.model, s.version) for s in listed.specs] == [(name, 2)]

    bad = spec_from_yaml(DESIGN_SPEC, "Bad_Name", "ds")
    bad.spec.task = "clustering"
    bad.spec.training.epochs = 0
    del bad.spec.rollout.steps[:]
    bad.spec.rollout.steps.extend([50, 10])
    bad.spec.monitor.method = "wasserstein"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=bad))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details()
    for path in (
        "metadata.name:",
        "spec.task:",
        "spec.training.epochs:",
        "spec.rollout.steps:",
        "spec.monitor.method:",
    ):
        assert path in details, f"{path} missing from: {details}"


async def test_racing_registrations_get_gapless_unique_versions(registry, unique):
    stub, _, _ = registry
    model = f"race-{unique}"
    versions = await asyncio.gather(*(register(stub, model) for _ in range(24)))
    assert sorted(v.version for v in versions) == list(range(1, 25))
    same_run = await asyncio.gather(
        *(
            stub.RegisterModelVersion(
                pb.RegisterModelVersionRequest(
                    model=model, run_id="run-once", artifact_uri="s3://mlops/m.onnx", artifact_sha256="b" * 64
                )
            )
            for _ in range(6)
        )
    )
    assert {r.model_version.version for r in same_run} == {25}, "registration is idempotent on the run id"
    assert sum(r.created for r in same_run) == 1
    listed = await stub.ListModelVersions(pb.ListModelVersionsRequest(model=model, page_size=1000))
    assert len(listed.model_versions) == 25


async def test_aliases_resolve_and_every_move_is_in_the_ledger(registry, kafka, unique):
    stub, _, _ = registry
    model = f"alias-{unique}"
    v1, v2 = await register(stub, model), await register(stub, model)
    async with raw_reader(kafka, "mlops.alias.changed") as reader:
        set1 = await stub.SetAlias(
            pb.SetAliasRequest(
                model=model, alias="production", version=1, actor="alice", reason="first release"
            )
        )
        event = await read_until(reader, lambda r: r.key == model.encode())
    changed = json_format.MessageToDict(_parse_alias_changed(event.value))
    # the actor typed in the request is not believed: the ledger names the authenticated caller
    assert (
        changed["alias"] == "production" and changed["toVersion"] == "1" and changed["actor"] == "user:admin"
    )

    between = datetime.now(UTC)
    await asyncio.sleep(0.01)
    moved = await stub.SetAlias(
        pb.SetAliasRequest(
            model=model, alias="production", version=2, actor="bob", reason="better", expected_version=1
        )
    )
    assert (set1.changed, moved.previous_version, moved.changed) == (True, 1, True)
    resolved = await stub.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert resolved.version == v2.version == 2 and list(resolved.aliases) == ["production"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetAlias(
            pb.SetAliasRequest(model=model, alias="production", version=1, expected_version=1)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetAlias(pb.SetAliasRequest(model=model, alias="production", version=99))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    deleted = await stub.DeleteAlias(pb.DeleteAliasRequest(model=model, alias="production", actor="carol"))
    assert (deleted.deleted, deleted.previous_version) == (True, 2)

    history = await stub.GetAliasHistory(pb.GetAliasHistoryRequest(model=model, alias="production"))
    assert [(c.from_version, c.to_version, c.actor) for c in history.changes] == [
        (2, 0, "user:admin"),
        (1, 2, "user:admin"),
        (0, 1, "user:admin"),
    ]
    at = pb.GetAliasHistoryRequest(model=model)
    at.at.FromDatetime(between)
    then = await stub.GetAliasHistory(at)
    assert [(a.alias, a.version) for a in then.aliases_at] == [("production", v1.version)], (
        "what served at time X"
    )


def _parse_alias_changed(value: bytes):
    from mlops.events.v1 import model_pb2

    message = model_pb2.AliasChanged()
    message.ParseFromString(value)
    return message


async def test_runs_track_params_and_per_epoch_metrics(registry, unique):
    stub, _, _ = registry
    run_id = f"run-{unique}"
    request = pb.CreateRunRequest(
        run_id=run_id,
        model=f"m-{unique}",
        params={"lr": "0.001"},
        hardware=pb.Hardware(device="cpu", cpu_count=2),
    )
    created = await stub.CreateRun(request)
    again = await stub.CreateRun(request)
    assert created.run_id == again.run_id and again.status == pb.RUN_STATUS_RUNNING
    await stub.LogRunMetrics(
        pb.LogRunMetricsRequest(
            run_id=run_id,
            epochs=[pb.EpochMetrics(epoch=e, metrics={"loss": 1.0 / (e + 1)}) for e in range(3)],
        )
    )
    finished = await stub.FinishRun(
        pb.FinishRunRequest(run_id=run_id, status=pb.RUN_STATUS_SUCCEEDED, metrics={"accuracy": 0.93})
    )
    assert finished.status == pb.RUN_STATUS_SUCCEEDED and finished.HasField("ended_at")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.FinishRun(pb.FinishRunRequest(run_id=run_id, status=pb.RUN_STATUS_FAILED))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    fetched = await stub.GetRun(pb.GetRunRequest(run_id=run_id, include_history=True))
    assert [h.epoch for h in fetched.history] == [0, 1, 2] and fetched.metrics["accuracy"] == 0.93
    listed = await stub.ListRuns(pb.ListRunsRequest(model=f"m-{unique}", status=pb.RUN_STATUS_SUCCEEDED))
    assert [r.run_id for r in listed.runs] == [run_id]


async def test_search_filters_by_tags_metrics_and_orders_by_metric(registry, unique):
    stub, _, _ = registry
    model = f"search-{unique}"
    for accuracy, team in ((0.80, "a"), (0.95, "b"), (0.90, "b")):
        await register(stub, model, metrics={"accuracy": accuracy}, tags={"team": team})
    found = await stub.SearchModelVersions(
        pb.SearchModelVersionsRequest(
            models=[model],
            tags={"team": "b"},
            order_by="metrics.accuracy desc",
            metric_filters=[
                pb.MetricFilter(
                    metric="accuracy", comparison=common_pb2.COMPARISON_GREATER_OR_EQUAL, value=0.85
                )
            ],
        )
    )
    assert [v.metrics["accuracy"] for v in found.model_versions] == [0.95, 0.90]
    tagged = await stub.UpdateModelVersionTags(
        pb.UpdateModelVersionTagsRequest(
            model=model, version=1, set_tags={"stage": "archived"}, remove_tags=["team"]
        )
    )
    assert dict(tagged.tags) == {"stage": "archived"}
