"""The rules of the registry's records without a database: what a request must hold, what a new data
set version, model version, run or evaluation says, how a search is ordered and filtered."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mlops.errors import FailedPrecondition, InvalidArgument, NotFound
from mlops.events.v1 import common_pb2, data_pb2, monitoring_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.core import datasets, deployments, evaluations, runs, specs, versions
from services.registry.storage.versions import MetricFilter, SortOrder, order_sql

SHA = "c" * 64
WHEN = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)


def dataset_request(**fields) -> pb.RecordDatasetVersionRequest:
    values = {"dataset": "wine", "uri": "s3://mlops/wine.csv", "sha256": SHA, "format": "csv"} | fields
    return pb.RecordDatasetVersionRequest(**values)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dataset": "-wine"}, "dataset name '-wine' is invalid"),
        ({"uri": "/tmp/wine.csv"}, "uri must be an s3:// or file:// URI"),
        ({"sha256": "abc"}, "sha256 must be 64 lowercase hex digits, got 'abc'"),
        ({"format": "xlsx"}, "format must be one of csv, parquet, got 'xlsx'"),
        ({"row_count": -1}, "row_count must not be negative"),
        ({"parent_sha256": "nope"}, "parent_sha256 must be 64 lowercase hex digits"),
    ],
)
def test_a_data_set_version_request_names_what_is_wrong(fields, message):
    with pytest.raises(InvalidArgument, match=message):
        datasets.check_record_request(dataset_request(**fields))


def test_a_good_data_set_version_request_passes():
    datasets.check_record_request(dataset_request(parent_sha256="d" * 64, row_count=0))


def test_a_data_commit_without_a_committer_is_recorded_as_its_producers():
    event = data_pb2.DataCommitted(
        dataset="wine", uri="s3://mlops/w.csv", sha256=SHA, format="csv", labels={"a": "b"}
    )
    request = datasets.commit_request(event, source="nightly-export", event_id="ce-1")
    assert (request.committed_by, request.source_event_id, dict(request.labels)) == (
        "nightly-export",
        "ce-1",
        {"a": "b"},
    )
    assert not request.HasField("committed_at")
    event.committed_by = "alice"
    event.committed_at.FromDatetime(WHEN)
    request = datasets.commit_request(event, source="nightly-export", event_id="ce-1")
    assert request.committed_by == "alice" and request.committed_at.ToDatetime(tzinfo=UTC) == WHEN


def test_a_new_data_set_version_is_committed_when_recorded_unless_the_commit_says_when():
    recorded_at = datetime(2026, 4, 2, tzinfo=UTC)
    record = datasets.new_version(
        dataset_request(row_count=3),
        version=2,
        parent_version=1,
        parent_sha256="d" * 64,
        recorded_at=recorded_at,
    )
    assert (record.version, record.parent_version, record.parent_sha256, record.row_count) == (
        2,
        1,
        "d" * 64,
        3,
    )
    assert record.committed_at == record.recorded_at
    request = dataset_request()
    request.committed_at.FromDatetime(WHEN)
    record = datasets.new_version(
        request, version=1, parent_version=0, parent_sha256="", recorded_at=recorded_at
    )
    assert record.committed_at.ToDatetime(tzinfo=UTC) == WHEN
    assert record.recorded_at.ToDatetime(tzinfo=UTC) == recorded_at


def test_a_missing_data_set_version_says_how_it_was_asked_for():
    assert str(datasets.not_found(pb.GetDatasetVersionRequest(dataset="wine", version=4))) == (
        "data set 'wine' has no version version 4"
    )
    assert "has no version with sha256 " + SHA in str(
        datasets.not_found(pb.GetDatasetVersionRequest(dataset="wine", sha256=SHA))
    )
    assert (
        str(datasets.not_found(pb.GetDatasetVersionRequest(dataset="wine")))
        == "data set 'wine' has no version"
    )


def test_csv_schema_is_still_served_from_the_core():
    columns, rows = datasets.csv_schema(b"a,b\n1,x\n2,y\n")
    assert [c.name for c in columns] == ["a", "b"] and rows == 2


def test_a_spec_is_given_its_defaults_and_every_problem_is_listed():
    spec = pb.ModelSpec(api_version="mlops/v1", kind="ModelSpec")
    spec.metadata.name = "wine"
    spec.spec.dataset, spec.spec.task, spec.spec.label = "wine", "classification", "target"
    assert specs.checked_spec(spec).spec.gate.metric == "accuracy"
    spec.metadata.name = "Bad_Name"
    spec.spec.task = "clustering"
    with pytest.raises(InvalidArgument) as caught:
        specs.checked_spec(spec)
    assert str(caught.value).startswith("the spec is invalid:\n  - ")
    assert "metadata.name:" in str(caught.value) and "spec.task:" in str(caught.value)


def registration(**fields) -> pb.RegisterModelVersionRequest:
    values = {
        "model": "wine",
        "artifact_uri": "s3://mlops/models/wine/m.onnx",
        "artifact_sha256": SHA,
    } | fields
    return pb.RegisterModelVersionRequest(**values)


def test_a_registration_checks_its_artifact_and_a_profile_only_when_given():
    versions.check_registration(registration())
    with pytest.raises(InvalidArgument, match="artifact_uri must be an s3:// or file:// URI"):
        versions.check_registration(registration(artifact_uri="wine.onnx"))
    with pytest.raises(InvalidArgument, match="profile_sha256 must be 64 lowercase hex digits"):
        versions.check_registration(registration(profile_uri="s3://mlops/p.json"))
    with pytest.raises(InvalidArgument, match="model name 'Wine' is invalid"):
        versions.check_registration(registration(model="Wine"))


def test_a_registered_version_and_its_event_carry_the_request_and_when():
    record = versions.new_version(
        registration(run_id="r1", metrics={"accuracy": 0.9}, tags={"team": "a"}), version=7, created_at=WHEN
    )
    assert (record.version, record.run_id, dict(record.metrics), dict(record.tags)) == (
        7,
        "r1",
        {"accuracy": 0.9},
        {"team": "a"},
    )
    event = versions.registered_event(record)
    assert (event.model, event.version, event.artifact_sha256) == ("wine", 7, SHA)
    assert event.registered_at == record.created_at and event.registered_at.ToDatetime(tzinfo=UTC) == WHEN


@pytest.mark.parametrize(
    ("order_by", "order", "sql"),
    [
        ("", SortOrder(), "v.created_at DESC, v.model, v.version DESC"),
        ("version", SortOrder("version", "ASC"), "v.version ASC, v.model"),
        ("created_at desc", SortOrder("created_at", "DESC"), "v.created_at DESC, v.model"),
        (
            "metrics.accuracy DESC",
            SortOrder("metrics", "DESC", "accuracy"),
            "(v.metrics ->> :order_metric)::float8 DESC NULLS LAST, v.model, v.version DESC",
        ),
    ],
)
def test_a_search_is_ordered_as_asked(order_by, order, sql):
    assert versions.sort_order(order_by) == order
    params: dict[str, object] = {}
    assert order_sql(order, params) == sql
    assert params == ({"order_metric": "accuracy"} if order.metric else {})


@pytest.mark.parametrize(
    ("order_by", "message"),
    [
        ("version sideways", "order_by 'version sideways' is invalid"),
        ("version asc extra", "order_by 'version asc extra' is invalid"),
        ("size desc", "order_by field 'size' is unknown"),
        ("metrics.", "order_by field 'metrics.' is unknown"),
    ],
)
def test_an_order_the_search_does_not_know_is_refused(order_by, message):
    with pytest.raises(InvalidArgument, match=message):
        versions.sort_order(order_by)


def test_metric_filters_need_a_comparison():
    request = pb.SearchModelVersionsRequest(
        metric_filters=[
            pb.MetricFilter(metric="accuracy", comparison=common_pb2.COMPARISON_GREATER_OR_EQUAL, value=0.8),
            pb.MetricFilter(metric="rmse", comparison=common_pb2.COMPARISON_LESS, value=2),
        ]
    )
    assert versions.metric_filters(request) == [
        MetricFilter("accuracy", ">=", 0.8),
        MetricFilter("rmse", "<", 2),
    ]
    request.metric_filters.add(metric="f1")
    with pytest.raises(InvalidArgument, match=r"metric_filters\[2\].comparison must be set"):
        versions.metric_filters(request)


def test_tags_are_removed_then_set():
    record = pb.ModelVersion(model="wine", version=1, tags={"team": "a", "stage": "new"})
    request = pb.UpdateModelVersionTagsRequest(
        remove_tags=["team", "absent", "stage"], set_tags={"stage": "old"}
    )
    assert dict(versions.retagged(record, request).tags) == {"stage": "old"}


def test_a_missing_model_version_says_how_it_was_asked_for():
    assert str(versions.not_found(pb.GetModelVersionRequest(model="wine", alias="production"))) == (
        "model 'wine' has no alias 'production'"
    )
    assert str(versions.not_found(pb.GetModelVersionRequest(model="wine", version=3))) == (
        "model 'wine' has no version 3"
    )
    assert str(versions.not_found(pb.GetModelVersionRequest(model="wine"))) == "model 'wine' has no versions"


def test_a_new_run_is_running_under_the_callers_id_or_a_fresh_one():
    run = runs.new_run(pb.CreateRunRequest(run_id="r1", model="wine", params={"lr": "0.1"}), started_at=WHEN)
    assert (run.run_id, run.status, dict(run.params)) == ("r1", pb.RUN_STATUS_RUNNING, {"lr": "0.1"})
    first = runs.new_run(pb.CreateRunRequest(model="wine"), started_at=WHEN).run_id
    second = runs.new_run(pb.CreateRunRequest(model="wine"), started_at=WHEN).run_id
    assert len(first) == 32 and first != second


def test_a_run_finishes_once():
    with pytest.raises(InvalidArgument, match="status must be SUCCEEDED, FAILED or CANCELLED"):
        runs.check_finish(pb.FinishRunRequest(run_id="r1", status=pb.RUN_STATUS_RUNNING))
    run = pb.Run(run_id="r1", status=pb.RUN_STATUS_RUNNING, metrics={"loss": 0.5})
    done = pb.FinishRunRequest(
        run_id="r1", status=pb.RUN_STATUS_SUCCEEDED, metrics={"accuracy": 0.9}, model_version=4
    )
    assert runs.finish(run, done, ended_at=WHEN) is True
    assert (run.status, dict(run.metrics), run.model_version) == (
        pb.RUN_STATUS_SUCCEEDED,
        {"loss": 0.5, "accuracy": 0.9},
        4,
    )
    assert run.ended_at.ToDatetime(tzinfo=UTC) == WHEN
    before = pb.Run()
    before.CopyFrom(run)
    assert runs.finish(run, done, ended_at=datetime.now(UTC)) is False, "a repeated finish changes nothing"
    assert run == before
    with pytest.raises(FailedPrecondition, match="run 'r1' already finished as RUN_STATUS_SUCCEEDED"):
        runs.finish(run, pb.FinishRunRequest(run_id="r1", status=pb.RUN_STATUS_FAILED), ended_at=WHEN)


def test_an_evaluation_needs_its_id_model_and_version_and_is_recorded_now_unless_it_says_when():
    good = pb.Evaluation(evaluation_id="ev1", model="wine", version=2, passed=True)
    kept = evaluations.checked_evaluation(pb.RecordEvaluationRequest(evaluation=good), recorded_at=WHEN)
    assert kept.recorded_at.ToDatetime(tzinfo=UTC) == WHEN and not good.HasField("recorded_at")
    good.recorded_at.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
    kept = evaluations.checked_evaluation(pb.RecordEvaluationRequest(evaluation=good), recorded_at=WHEN)
    assert kept.recorded_at.ToDatetime(tzinfo=UTC) == datetime(2026, 1, 1, tzinfo=UTC)
    for bad, message in (
        (pb.Evaluation(model="wine", version=2), "evaluation.evaluation_id is required"),
        (pb.Evaluation(evaluation_id="e", model="Wine", version=2), "model name 'Wine' is invalid"),
        (pb.Evaluation(evaluation_id="e", model="wine"), "evaluation.version must be a model version"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            evaluations.checked_evaluation(pb.RecordEvaluationRequest(evaluation=bad), recorded_at=WHEN)


def test_a_deployment_needs_its_rollout_id_and_a_valid_model():
    deployments.check_deployment(pb.Deployment(rollout_id="ro1", model="wine"))
    with pytest.raises(InvalidArgument, match=r"deployment\.rollout_id is required"):
        deployments.check_deployment(pb.Deployment(model="wine"))
    with pytest.raises(InvalidArgument, match="model name '' is invalid"):
        deployments.check_deployment(pb.Deployment(rollout_id="ro1"))


def test_monitor_events_are_stored_under_their_kind_and_read_back_as_they_were():
    drift = monitoring_pb2.DriftDetected(model="wine", version=1, prediction_drift_score=0.4)
    degraded = monitoring_pb2.PerformanceDegraded(model="wine", version=1)
    assert (deployments.monitor_kind(drift), deployments.monitor_kind(degraded)) == ("drift", "degradation")
    assert deployments.monitor_event("drift", drift.SerializeToString()) == drift
    assert deployments.monitor_event("degradation", degraded.SerializeToString()) == degraded


def test_not_found_is_the_error_for_missing_records():
    assert isinstance(versions.not_found(pb.GetModelVersionRequest(model="m")), NotFound)
    assert isinstance(runs.missing("r"), NotFound) and str(runs.missing("r")) == "run 'r' does not exist"
