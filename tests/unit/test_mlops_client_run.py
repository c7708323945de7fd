"""ActiveRun's bookkeeping, seen from the wire: what it sends for metrics per step, params, tags and its
end, recorded by an in-process gRPC server that keeps the requests (the real registry is exercised in
tests/integration/test_mlops_client.py)."""

from __future__ import annotations

from concurrent import futures

import grpc
import mlops_client
import pytest
from mlops_client import protocol


class _Recorder:
    """Answers the run RPCs with a plausible Run and keeps every request, by method."""

    def __init__(self) -> None:
        self.requests: dict[str, list] = {}

    def handler(self, name: str):
        _, request_class, response_class, _, _ = protocol.method(name)

        def answer(request, context):
            self.requests.setdefault(name, []).append(request)
            if name == "LogRunMetrics":
                return response_class()
            if name == "GetDatasetVersion":
                return response_class(dataset=request.dataset, version=request.version or 5, sha256="ab" * 32)
            status = {"CreateRun": 1, "UpdateRun": 1}.get(name, getattr(request, "status", 1))
            return response_class(run_id=request.run_id, model="wine", status=status, source="client")

        return grpc.unary_unary_rpc_method_handler(
            answer,
            request_deserializer=request_class.FromString,
            response_serializer=response_class.SerializeToString,
        )


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    for name in (
        "MLOPS_REGISTRY_ADDR",
        "MLOPS_TOKEN",
        "MLOPS_GRPC_CLIENT_TOKEN",
        "MLOPS_CA_FILE",
        "MLOPS_GRPC_CLIENT_CA_FILE",
        "MLOPS_GRPC_CLIENT_CERT_FILE",
        "MLOPS_GRPC_CLIENT_KEY_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLOPS_CONFIG", str(tmp_path / "absent.yaml"))
    recorder = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    methods = {
        name: recorder.handler(name)
        for name in ("CreateRun", "LogRunMetrics", "FinishRun", "UpdateRun", "GetDatasetVersion")
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(protocol.SERVICE, methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = mlops_client.Client(f"127.0.0.1:{port}")
    yield client, recorder.requests
    client.close()
    server.stop(None)


def test_metrics_of_one_step_travel_together_and_a_stepless_metric_takes_its_next_step(recorded):
    client, requests = recorded
    with client.start_run(experiment="wine", params={"C": 1}, tags={"t": "x"}, dataset="wine@2") as run:
        run.log_metric("loss", 0.9, step=1)
        run.log_metric("accuracy", 0.5, step=1)
        run.log_metric("loss", 0.4)
        run.log_metrics({"loss": 0.3, "accuracy": 0.8}, step=3)
        run.log_param("epochs", 3)
        run.set_tag("stage", "dev")
    created = requests["CreateRun"][0]
    assert (created.model, created.dataset, created.dataset_version, created.source) == (
        "wine",
        "wine",
        2,
        "client",
    )
    assert (
        dict(created.params) == {"C": "1"} and dict(created.tags) == {"t": "x"} and len(created.run_id) == 32
    )
    assert created.hardware.software["python"]
    sent = [(e.epoch, dict(e.metrics)) for r in requests["LogRunMetrics"] for e in r.epochs]
    assert sent == [
        (1, {"loss": 0.9}),
        (1, {"loss": 0.9, "accuracy": 0.5}),  # the whole step again: the registry replaces a step
        (2, {"loss": 0.4}),
        (3, {"loss": 0.3, "accuracy": 0.8}),
    ]
    assert [dict(r.params) for r in requests["UpdateRun"]] == [{"epochs": "3"}, {}]
    assert dict(requests["UpdateRun"][1].set_tags) == {"stage": "dev"}
    finished = requests["FinishRun"][0]
    assert protocol.enum_name("RunStatus", finished.status) == "RUN_STATUS_SUCCEEDED"
    assert dict(finished.metrics) == {"loss": 0.3, "accuracy": 0.8} and not finished.error


def test_an_exception_fails_the_run_with_its_text_and_still_propagates(recorded):
    client, requests = recorded
    with pytest.raises(KeyError), client.start_run(experiment="wine") as run:
        run.log_metric("loss", 1.0, step=1)
        raise KeyError("feature 'age'")
    finished = requests["FinishRun"][0]
    assert protocol.enum_name("RunStatus", finished.status) == "RUN_STATUS_FAILED"
    assert finished.error == "KeyError: \"feature 'age'\""
    assert (
        protocol.enum_name("mlops.events.v1.TrainingStage", finished.failed_stage) == "TRAINING_STAGE_TRAIN"
    )


def test_steps_start_at_one_and_bytes_need_a_path(recorded):
    client, requests = recorded
    run = client.start_run(experiment="wine")
    with pytest.raises(mlops_client.InvalidArgument, match="step 0 is not an integer from 1"):
        run.log_metric("loss", 1.0, step=0)
    with pytest.raises(mlops_client.InvalidArgument, match="bytes need a path"):
        run.log_artifact(b"data")
    assert "LogRunMetrics" not in requests
    run.end("CANCELLED")
    assert protocol.enum_name("RunStatus", requests["FinishRun"][0].status) == "RUN_STATUS_CANCELLED"
