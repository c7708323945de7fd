"""The inference server over a real gRPC connection (in-process, no other service): its servicer only
converts and calls the core, and a failure becomes the status the platform's one mapping gives it."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc
from mlops.grpc.errors import status_for
from services.inference import codec
from services.inference.core import InferenceCore, ModelState, PredictionLog, VersionSpec
from services.inference.servicer import InferenceServicer
from tests.unit.test_inference_codec import FEATURES, SumModel


class FailingModel(SumModel):
    """Scores by calling something that fails: a remote backend that is down, or a bug."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    def run(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        raise self.failure


class Runtime:
    """Version 1 scores; version 2's backend cannot be reached; version 3 has a bug."""

    def load(self, data: bytes, *, name: str, task: str, feature_count: int, class_count: int) -> SumModel:
        if data == b"2":
            return FailingModel(ConnectionRefusedError("the scoring backend refused the connection"))
        if data == b"3":
            return FailingModel(RuntimeError("a bug"))
        return SumModel()


class Log(PredictionLog):
    def __init__(self) -> None:
        self.errors: list[str] = []

    def sampled(self) -> bool:
        return True

    def record(self, serving, role, request_id, arrived_ns, rows, outputs, latency_us, error="") -> None:
        self.errors.append(error)


def spec(version: int, percent: int, role: str) -> VersionSpec:
    return VersionSpec(
        version, f"s3://b/{version}", f"{version:064d}", percent, role, "classification", FEATURES, ("x", "y")
    )


async def read(uri: str, sha256: str) -> bytes:
    return uri.rsplit("/", 1)[1].encode()


@pytest.fixture
async def served():
    log = Log()
    core = InferenceCore(
        runtime=Runtime(),  # type: ignore[arg-type]
        read_artifact=read,
        executor=ThreadPoolExecutor(2),
        prediction_log=log,
    )
    servicer = InferenceServicer(
        core, codec.Limits(max_rows=10, max_bytes=10_000), server_name="t", server_version="0"
    )
    server = grpc.aio.server()
    servicer.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield core, grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel), log
    await channel.close()
    await server.stop(None)


def infer_request(model: str, version: str = "") -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
    return request


async def refusal(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_an_outage_behind_a_model_is_unavailable_and_counted_so(served):
    core, stub, log = served
    model = f"m{uuid.uuid4().hex[:8]}"
    versions = (spec(1, 100, "production"), spec(2, 0, "canary"), spec(3, 0, "canary"))
    assert (await core.apply(ModelState(model, 1, versions))).kind == "applied"
    assert (await stub.ModelInfer(infer_request(model, "1"))).model_version == "1"

    down = await refusal(stub.ModelInfer(infer_request(model, "2")))
    assert down.code() == grpc.StatusCode.UNAVAILABLE, down.details()
    assert down.details() == "a dependency of ModelInfer is unavailable; retry shortly"
    counted = REGISTRY.get_sample_value(
        "mlops_inference_requests_total", {"model": model, "version": "2", "code": "UNAVAILABLE"}
    )
    assert counted == 1
    assert log.errors[-1].startswith("UNAVAILABLE: ConnectionRefusedError: the scoring backend refused")

    bug = await refusal(stub.ModelInfer(infer_request(model, "3")))
    assert bug.code() == grpc.StatusCode.INTERNAL
    assert bug.details().startswith("internal error in ModelInfer (trace ") and "a bug" not in bug.details()
    assert log.errors[-1] == "INTERNAL: RuntimeError: a bug"


async def test_an_outage_in_a_metadata_call_is_unavailable(served, monkeypatch):
    core, stub, _ = served

    def unreachable() -> list:
        raise TimeoutError("the model repository did not answer")

    monkeypatch.setattr(core, "repository_index", unreachable)
    down = await refusal(stub.RepositoryIndex(oip.RepositoryIndexRequest()))
    assert down.code() == grpc.StatusCode.UNAVAILABLE
    assert down.details() == "a dependency of RepositoryIndex is unavailable; retry shortly"


def test_the_inference_server_maps_errors_as_every_other_server_does():
    """One mapping: the interceptor's and the inference servicer's answers come from `status_for`."""
    from mlops.errors import NotFound, Unavailable

    assert status_for(NotFound("gone"), "M", None) == (grpc.StatusCode.NOT_FOUND, "gone")
    assert status_for(Unavailable("later"), "M", None) == (grpc.StatusCode.UNAVAILABLE, "later")
    assert status_for(ConnectionResetError("reset"), "M", "ab")[0] == grpc.StatusCode.UNAVAILABLE
    assert status_for(KeyError("x"), "M", "ab") == (
        grpc.StatusCode.INTERNAL,
        "internal error in M (trace ab); the server logged it",
    )


async def test_metadata_readiness_and_the_index_come_from_the_core(served):
    core, stub, _ = served
    model = f"m{uuid.uuid4().hex[:8]}"
    assert not (await stub.ServerReady(oip.ServerReadyRequest())).ready, "not before the state is read"
    core.caught_up()
    assert (await stub.ServerReady(oip.ServerReadyRequest())).ready

    unknown = await refusal(stub.ModelMetadata(oip.ModelMetadataRequest(name=model)))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and "is not served here" in unknown.details()
    versions = (spec(10, 0, "canary"), spec(1, 100, "production"), spec(2, 0, "shadow"))
    assert (await core.apply(ModelState(model, 1, versions))).kind == "applied"

    default = await stub.ModelMetadata(oip.ModelMetadataRequest(name=model))
    named = await stub.ModelMetadata(oip.ModelMetadataRequest(name=model, version="10"))
    assert (default.name, default.versions) == (model, ["1", "2", "10"])
    assert codec.model_metadata(*core.metadata(model)) == default
    assert codec.model_metadata(*core.metadata(model, "10")) == named
    missing = await refusal(stub.ModelMetadata(oip.ModelMetadataRequest(name=model, version="4")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert missing.details() == f"model {model!r} has no version '4' loaded (loaded: 1, 2, 10)"

    assert (await stub.ModelReady(oip.ModelReadyRequest(name=model, version="2"))).ready
    assert not (await stub.ModelReady(oip.ModelReadyRequest(name=model, version="4"))).ready
    index = await stub.RepositoryIndex(oip.RepositoryIndexRequest())
    mine = [(m.version, m.state, m.reason) for m in index.models if m.name == model]
    assert mine == [("1", "READY", "production"), ("10", "READY", "canary"), ("2", "READY", "shadow")]
