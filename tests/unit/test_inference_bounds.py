"""What grows with outside input has a bound: Prometheus series by model name and version, the
batcher's queue, shadow calls in flight; and what the core reports when a desired state cannot load."""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from inference import grpc_service_pb2 as oip
from mlops.errors import ResourceExhausted, Unavailable
from services.inference import codec
from services.inference.batching import Batcher
from services.inference.core import InferenceCore, ModelState, VersionSpec
from services.inference.servicer import InferenceServicer
from tests.unit.test_inference_codec import FEATURES, SumModel


class Runtime:
    def load(self, data: bytes, *, name: str, task: str, feature_count: int, class_count: int) -> SumModel:
        return SumModel()


def spec(version: int, percent: int = 100, role: str = "production") -> VersionSpec:
    return VersionSpec(
        version, f"s3://b/{version}", f"{version:064d}", percent, role, "classification", FEATURES, ("x", "y")
    )


async def read(uri: str, sha256: str) -> bytes:
    return b"model"


def core(read_artifact=read, threads: int = 2, **options) -> InferenceCore:
    executor = ThreadPoolExecutor(threads)
    return InferenceCore(runtime=Runtime(), read_artifact=read_artifact, executor=executor, **options)  # type: ignore[arg-type]


class Aborted(Exception):
    pass


class Context:
    """The part of a grpc.aio servicer context the servicer uses."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def invocation_metadata(self):
        return ()

    async def abort(self, code, details):
        self.code, self.details = code, details
        raise Aborted(details)


def infer_request(model: str, version: str = "") -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
    return request


def series(metric: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(metric, labels)


def names_of(metric: str) -> set[str]:
    return {
        sample.labels["model"]
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == metric
    }


# --- Prometheus series ---------------------------------------------------------------------------------


async def test_requests_for_unknown_models_share_one_series():
    served = core()
    servicer = InferenceServicer(
        served, codec.Limits(max_rows=10, max_bytes=10_000), server_name="t", server_version="0"
    )
    before = series("mlops_inference_requests_total", model="_unknown", version="", code="NOT_FOUND") or 0
    names = [f"x{uuid.uuid4().hex}" for _ in range(20)]
    for name in names:
        context = Context()
        with pytest.raises(Aborted):
            await servicer.ModelInfer(infer_request(name), context)
        assert context.code == grpc.StatusCode.NOT_FOUND
    assert (
        series("mlops_inference_requests_total", model="_unknown", version="", code="NOT_FOUND")
        == before + 20
    )
    assert not set(names) & names_of("mlops_inference_requests_total")


async def test_a_version_that_leaves_the_desired_state_leaves_no_series_behind():
    model = f"m{uuid.uuid4().hex[:8]}"
    served = core()
    servicer = InferenceServicer(
        served, codec.Limits(max_rows=10, max_bytes=10_000), server_name="t", server_version="0"
    )
    assert (await served.apply(ModelState(model, 1, (spec(1),)))).kind == "applied"
    answer = await servicer.ModelInfer(infer_request(model), Context())
    assert answer.model_version == "1"
    assert series("mlops_inference_requests_total", model=model, version="1", code="OK") == 1
    assert series("mlops_inference_request_seconds_count", model=model, version="1") == 1
    assert series("mlops_inference_batch_size_count", model=model, version="1") == 1

    assert (await served.apply(ModelState(model, 2, (spec(2),)))).kind == "applied"
    assert (await servicer.ModelInfer(infer_request(model), Context())).model_version == "2"
    for metric in ("mlops_inference_requests_total", "mlops_inference_request_seconds_count"):
        assert (
            series(metric, model=model, version="1", **({"code": "OK"} if "total" in metric else {})) is None
        )
    assert series("mlops_inference_batch_size_count", model=model, version="1") is None
    assert series("mlops_inference_requests_total", model=model, version="2", code="OK") == 1

    served.remove(model)
    assert series("mlops_inference_requests_total", model=model, version="2", code="OK") is None
    assert model not in names_of("mlops_inference_request_seconds_count")


# --- the batcher's queue --------------------------------------------------------------------------------


class Gate:
    """A model whose calls wait until the test opens the gate."""

    def __init__(self) -> None:
        self.open = threading.Event()

    def run(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        self.open.wait(10)
        return SumModel().run(rows)


@pytest.mark.parametrize("batch", [8, 0], ids=["batched", "unbatched"])
async def test_a_full_batcher_refuses_with_resource_exhausted(batch):
    gate = Gate()
    batcher = Batcher(
        gate.run,
        ThreadPoolExecutor(1),
        max_batch_size=batch,
        max_wait_us=0,
        observe_batch=lambda n: None,
        max_pending=3,
        name="model 'wine' v7",
    )
    rows = np.ones((1, 3), np.float32)
    waiting = [batcher.submit(rows) for _ in range(3)]
    with pytest.raises(ResourceExhausted) as caught:
        batcher.submit(rows)
    assert "model 'wine' v7" in caught.value.message and "at most 3" in caught.value.message
    gate.open.set()
    answers = await asyncio.gather(*waiting)
    assert len(answers) == 3
    await asyncio.sleep(0)  # done callbacks run in the loop's next turn
    assert (await batcher.submit(rows))["label"].shape == (1,), "room again once the queue drained"


# --- shadow calls -----------------------------------------------------------------------------------


async def test_shadow_calls_past_the_bound_are_shed_and_counted():
    model = f"m{uuid.uuid4().hex[:8]}"
    served = core(threads=8, max_shadow_calls=2)  # room for the blocked shadows and the answers
    await served.apply(ModelState(model, 1, (spec(1), spec(2, 0, "shadow"))))
    gate = Gate()
    shadow = served.models[model].by_version["2"]
    shadow.batcher._run = gate.run
    shadow.batcher.call_s = None  # slow: the shadow's calls go to the threads and wait there
    rows = np.ones((1, 3), np.float32)
    for _ in range(5):
        await served.predict(served.route(model), rows, request_id="", arrived_ns=0)
    assert len(served._background) == 2
    assert series("mlops_inference_shadow_shed_total", model=model) == 3
    gate.open.set()
    await served.drain()


# --- readiness and refused desired states -------------------------------------------------------------


async def test_readiness_follows_whether_every_named_model_answers():
    changes: list[bool] = []

    async def read_or_fail(uri: str, sha256: str) -> bytes:
        if uri.endswith("/9"):
            raise PermissionError(f"403 Forbidden: {uri}")  # a permanent store error: no outage
        return b"model"

    served = core(read_or_fail)
    served.readiness_listener = changes.append
    assert served.ready
    good, bad = f"g{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    assert (await served.apply(ModelState(good, 1, (spec(1),)))).kind == "applied"
    assert served.ready and changes == [False, True], "not ready while the new model loads"
    changes.clear()
    outcome = await asyncio.wait_for(served.apply(ModelState(bad, 1, (spec(9),))), 5)
    assert outcome.kind == "refused" and "403 Forbidden" in outcome.reason, outcome
    assert not served.ready and changes == [False]
    assert "cannot be loaded" in served.not_ready()[bad]
    with pytest.raises(Unavailable, match="403"):
        served.route(bad)
    # the next desired state is not held behind the failed one, and what served still serves
    assert (await served.apply(ModelState(good, 2, (spec(2),)))).kind == "applied"
    assert served.route(good).serving.spec.version == 2
    served.remove(bad)
    assert served.ready and changes == [False, True]


async def test_a_refused_new_version_keeps_the_old_one_serving_and_the_server_ready():
    async def read_or_fail(uri: str, sha256: str) -> bytes:
        if uri.endswith("/9"):
            raise ValueError("sha256 mismatch")
        return b"model"

    model = f"m{uuid.uuid4().hex[:8]}"
    served = core(read_or_fail)
    await served.apply(ModelState(model, 1, (spec(1),)))
    outcome = await served.apply(ModelState(model, 2, (spec(9),)))
    assert outcome.kind == "refused" and "sha256 mismatch" in outcome.reason
    assert served.ready and served.route(model).serving.spec.version == 1
