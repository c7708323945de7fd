"""The inference server against the real stack: Kafka (desired state in, inference log out), S3
(artifacts), the registry service, Jaeger; and an unmodified `tritonclient.grpc` as the client.

Models are trained here by the trainer's own code (`services.trainer.training.train`) on
scikit-learn's wine (classification) and diabetes (regression) data, stored content-addressed in
the stack's artifact store, and named by DesiredState records published on this module's own
topics (a fresh prefix per run, deleted afterwards), so that the server reads a history of its own.

tritonclient pins protobuf < 7 and registers the same `inference` descriptors as our generated
code, so it runs in its own virtual environment (tests/bench/setup.sh makes it) as a subprocess
that takes one JSON call per line.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from opentelemetry import trace
from prometheus_client import REGISTRY
from sklearn.datasets import load_diabetes, load_wine

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc
from mlops.bus import EventPublisher
from mlops.event_catalog import spec_for
from mlops.events.v1 import common_pb2, deployment_pb2, monitoring_pb2
from mlops.grpc import open_channel
from mlops.settings import BusSettings, GrpcClientSettings, KafkaSettings
from mlops.store import open_store
from services.inference.app import InferenceApp
from services.inference.settings import InferenceSettings
from services.trainer.training import TrainingParams, TrainRequest, train
from tests.e2e.slow_model import slowed
from tests.integration.bus_helpers import raw_reader
from tests.integration.conftest import eventually, jaeger_trace

CACHE = Path(os.environ.get("MLOPS_CACHE", Path.home() / ".cache" / "mlops"))
TRITON_PYTHON = Path(
    os.environ.get("MLOPS_TRITONCLIENT_PYTHON", CACHE / "tritonclient-venv" / "bin" / "python")
)
PRODUCTION = common_pb2.SERVING_ROLE_PRODUCTION
CANARY = common_pb2.SERVING_ROLE_CANARY
SHADOW = common_pb2.SERVING_ROLE_SHADOW

TRITON_CLIENT = r"""
import json, os, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

# TLS as the platform serves it: the CA, and the certificate or the bearer token the test gives (files)
client = grpcclient.InferenceServerClient(
    sys.argv[1], ssl=True, root_certificates=os.environ["TRITON_CA"],
    private_key=os.environ.get("TRITON_KEY"), certificate_chain=os.environ.get("TRITON_CERT"),
)
AUTH = {"authorization": "Bearer " + os.environ["TRITON_TOKEN"]} if os.environ.get("TRITON_TOKEN") else {}
DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "BYTES": np.object_}
TYPED = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents",
         "INT64": "int64_contents", "BYTES": "bytes_contents"}

def infer(call):
    inputs = []
    for spec in call["inputs"]:
        data = spec["data"]
        if spec["datatype"] == "BYTES":
            data = [value.encode() for value in data]
        array = np.array(data, dtype=DTYPES[spec["datatype"]]).reshape(spec["shape"])
        tensor = grpcclient.InferInput(spec["name"], list(array.shape), spec["datatype"])
        if spec.get("typed"):
            # typed contents instead of raw bytes: the client's own request message, filled in
            getattr(tensor._get_tensor().contents, TYPED[spec["datatype"]]).extend(array.reshape(-1).tolist())
        else:
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [grpcclient.InferRequestedOutput(name) for name in call.get("outputs", [])] or None
    result = client.infer(call["model"], inputs, model_version=call.get("version", ""), outputs=outputs,
                          request_id=call.get("id", ""), headers={**AUTH, **(call.get("headers") or {})})
    response = result.get_response()
    answer = {"version": response.model_version, "id": response.id, "outputs": {}}
    for tensor in response.outputs:
        value = result.as_numpy(tensor.name)
        data = [v.decode() for v in value.reshape(-1)] if value.dtype == np.object_ else value.tolist()
        answer["outputs"][tensor.name] = {"datatype": tensor.datatype, "shape": list(tensor.shape), "data": data}
    return answer

for line in sys.stdin:
    call = json.loads(line)
    try:
        if call["op"] == "infer":
            answer = infer(call)
        elif call["op"] == "metadata":
            answer = {"metadata": client.get_model_metadata(call["model"], call.get("version", ""), headers=AUTH, as_json=True)}
        elif call["op"] == "ready":
            answer = {"ready": client.is_model_ready(call["model"], call.get("version", ""), headers=AUTH)}
        elif call["op"] == "server":
            answer = {"live": client.is_server_live(headers=AUTH), "ready": client.is_server_ready(headers=AUTH),
                      "metadata": client.get_server_metadata(headers=AUTH, as_json=True)}
        answer["ok"] = True
    except InferenceServerException as error:
        answer = {"ok": False, "status": str(error.status()), "message": error.message()}
    print(json.dumps(answer), flush=True)
"""


class TritonClient:
    """An unmodified tritonclient.grpc in a subprocess of its own; one JSON call per line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lock = asyncio.Lock()

    @classmethod
    async def start(cls, address: str, script: Path, *, token: str | None = None) -> TritonClient:
        """Speaks TLS with the operator's certificate (mutual TLS), or with `token` alone; in the
        environment, never on the command line."""
        security = GrpcClientSettings()
        tls = {"TRITON_CA": str(security.ca_file)}
        if token is not None:
            tls["TRITON_TOKEN"] = token
        else:
            tls |= {"TRITON_CERT": str(security.cert_file), "TRITON_KEY": str(security.key_file)}
        process = await asyncio.create_subprocess_exec(
            str(TRITON_PYTHON),
            str(script),
            address,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, **tls},
        )
        return cls(process)

    async def call(self, **call) -> dict:
        async with self.lock:
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write((json.dumps(call) + "\n").encode())
            await self.process.stdin.drain()
            line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert line, "the tritonclient process ended"
        return json.loads(line)

    async def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        await asyncio.wait_for(self.process.wait(), 10)


# --- models, trained by the trainer's code, stored in the stack's artifact store -----------------


@dataclass
class Trained:
    task: str
    onnx: bytes
    uri: str
    sha256: str
    feature_names: list[str]
    class_labels: list[str]
    rows: np.ndarray
    """Some real rows of the data set, FP32, in feature order."""

    def expected(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        session = ort.InferenceSession(self.onnx, providers=["CPUExecutionProvider"])
        names = ["probabilities", "label"] if self.task == "classification" else ["prediction"]
        return dict(zip(names, session.run(names, {"input": rows.astype(np.float32)}), strict=True))


async def _train(store, frame: pd.DataFrame, task: str, *, seed: int, hidden: tuple[int, ...]) -> Trained:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.csv"
        frame.to_csv(path, index=False)
        request = TrainRequest(
            model="inference-tests",
            task=task,
            label="target",
            features=[],
            data_path=str(path),
            data_format="csv",
            params=TrainingParams(hidden_layers=hidden, epochs=15, seed=seed, batch_size=32),
            device="cpu",
        )
        outcome = await asyncio.to_thread(train, request)
    assert outcome.ok, f"training failed at {outcome.stage}: {outcome.reason}"
    ref = await store.put_bytes("models/inference-tests", "model.onnx", outcome.onnx)
    features = list(outcome.feature_names)
    return Trained(
        task=task,
        onnx=outcome.onnx,
        uri=ref.uri,
        sha256=ref.sha256,
        feature_names=features,
        class_labels=list(outcome.class_labels),
        rows=frame[features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)[:64],
    )


@dataclass
class Models:
    wine_a: Trained
    wine_b: Trained
    diabetes: Trained
    not_onnx_uri: str
    not_onnx_sha256: str


@pytest.fixture(scope="module")
async def models(artifact_settings) -> Models:
    store = open_store(artifact_settings)
    wine = load_wine(as_frame=True).frame
    wine["target"] = wine["target"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    diabetes = load_diabetes(as_frame=True).frame
    garbage = await store.put_bytes(
        "models/inference-tests", "model.onnx", b"these bytes are not an ONNX model"
    )
    return Models(
        wine_a=await _train(store, wine, "classification", seed=1, hidden=(16,)),
        wine_b=await _train(store, wine, "classification", seed=2, hidden=(8, 8)),
        diabetes=await _train(store, diabetes, "regression", seed=3, hidden=(16,)),
        not_onnx_uri=garbage.uri,
        not_onnx_sha256=garbage.sha256,
    )


# --- the server, in-process, on topics of this module's own --------------------------------------


@dataclass
class Harness:
    app: InferenceApp
    bus: BusSettings
    publisher: EventPublisher
    stub: grpc_service_pb2_grpc.GRPCInferenceServiceStub
    triton: TritonClient
    address: str

    async def publish(self, state: deployment_pb2.DesiredState) -> None:
        await self.publisher.publish(state)

    async def tombstone(self, model: str) -> None:
        topic = self.bus.topic_prefix + spec_for(deployment_pb2.DesiredState).topic
        await self.publisher.publish_encoded(topic, model, None, [])  # type: ignore[arg-type]

    async def serve(self, state: deployment_pb2.DesiredState) -> None:
        """Publish a state and wait until this server runs its generation."""
        await self.publish(state)
        await eventually(
            lambda: self.app.core.generation(state.model) == state.generation,
            timeout_s=30,
            what=f"{state.model} generation {state.generation} served",
        )


def server_settings(**overrides) -> InferenceSettings:
    values = {
        "grpc_port": 0,
        "metrics_port": None,
        "signatures_from_registry": False,
        "confirm_artifacts": False,  # these tests serve models of their own; test_inference_trust checks
        "log_flush_interval_ms": 200,
        "log_batch_records": 200,
        "server_id": "inference-tests",
    }
    return InferenceSettings(**(values | overrides))


@pytest.fixture(scope="module")
async def topics_bus(kafka) -> BusSettings:
    prefix = f"tests.inference.{uuid.uuid4().hex[:8]}."
    bus = BusSettings(retry_backoff_ms=20, retry_backoff_max_ms=100, max_attempts=3, topic_prefix=prefix)
    yield bus
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def triton_script(tmp_path_factory) -> Path:
    if not TRITON_PYTHON.exists():
        pytest.fail(
            f"tritonclient's virtual environment is missing ({TRITON_PYTHON}); run `bash tests/bench/setup.sh`",
            pytrace=False,
        )
    script = tmp_path_factory.mktemp("triton") / "client.py"
    script.write_text(TRITON_CLIENT)
    return script


@pytest.fixture(scope="module")
async def harness(kafka, topics_bus, artifact_settings, telemetry, models, triton_script):
    app = InferenceApp(server_settings(), kafka=kafka, bus=topics_bus, store=open_store(artifact_settings))
    publisher = EventPublisher(kafka, topics_bus, source="mlops-deployer-tests")
    await publisher.start()
    port = await app.start(ready_timeout_s=60)
    address = f"127.0.0.1:{port}"
    channel = open_channel(address, traced=False)
    triton = await TritonClient.start(address, triton_script)
    yield Harness(
        app, topics_bus, publisher, grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel), triton, address
    )
    await triton.close()
    await channel.close()
    await app.stop()
    await publisher.stop()


def version(
    trained: Trained, number: int, percent: int = 100, role=PRODUCTION
) -> deployment_pb2.ServingVersion:
    return deployment_pb2.ServingVersion(
        version=number,
        artifact_uri=trained.uri,
        artifact_sha256=trained.sha256,
        traffic_percent=percent,
        role=role,
        task=trained.task,
        feature_names=trained.feature_names,
        class_labels=trained.class_labels,
    )


def state(
    model: str, generation: int, *versions, batch: int = 0, wait_us: int = 0
) -> deployment_pb2.DesiredState:
    return deployment_pb2.DesiredState(
        model=model,
        generation=generation,
        versions=list(versions),
        batching=deployment_pb2.BatchingConfig(max_batch_size=batch, max_wait_us=wait_us),
    )


def name() -> str:
    return f"wine-{uuid.uuid4().hex[:8]}"


def request(
    model: str, rows: np.ndarray, *, version: str = "", request_id: str = ""
) -> oip.ModelInferRequest:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    message = oip.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    message.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    message.raw_input_contents.append(rows.tobytes())
    return message


def probabilities(response: oip.ModelInferResponse) -> np.ndarray:
    index = [o.name for o in response.outputs].index("probabilities")
    shape = response.outputs[index].shape
    return np.frombuffer(response.raw_output_contents[index], dtype="<f4").reshape(shape)


def sample(metric: str, **labels) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


# --- the protocol, through an unmodified tritonclient --------------------------------------------


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT32", "INT64"])
async def test_tritonclient_infers_typed_and_raw_inputs_of_every_datatype(harness, models, datatype):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 1)))
    rows = np.round(trained.rows[:5]) if datatype.startswith("INT") else trained.rows[:5]
    expected = trained.expected(rows)
    for typed in (False, True):
        data = rows.astype(np.int64 if datatype.startswith("INT") else np.float64).tolist()
        answer = await harness.triton.call(
            op="infer",
            model=model,
            id=f"req-{datatype}",
            inputs=[
                {
                    "name": "input",
                    "datatype": datatype,
                    "shape": list(rows.shape),
                    "data": data,
                    "typed": typed,
                }
            ],
        )
        assert answer["ok"], answer
        assert answer["version"] == "1" and answer["id"] == f"req-{datatype}"
        outputs = answer["outputs"]
        assert outputs["probabilities"]["datatype"] == "FP32"
        assert outputs["probabilities"]["shape"] == [5, 3]
        np.testing.assert_allclose(
            outputs["probabilities"]["data"], expected["probabilities"], rtol=1e-5, atol=1e-6
        )
        assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["shape"] == [5]
        assert outputs["label"]["data"] == [trained.class_labels[i] for i in expected["label"]]


async def test_tritonclient_sends_one_tensor_per_feature(harness, models):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 1)))
    rows = trained.rows[:4].copy()
    for typed in (False, True):  # as Triton, one request is all raw or all typed
        inputs = []
        for column, feature in enumerate(trained.feature_names):
            shape = [4] if column % 2 else [4, 1]
            datatype = ("FP32", "FP64", "INT64")[column % 3] if typed else ("FP32", "FP64")[column % 2]
            values = rows[:, column].astype(np.float64)
            if datatype == "INT64":
                rows[:, column] = np.round(values)
                values = np.round(values).astype(np.int64)
            inputs.append(
                {
                    "name": feature,
                    "datatype": datatype,
                    "shape": shape,
                    "data": values.reshape(shape).tolist(),
                    "typed": typed,
                }
            )
        expected = trained.expected(rows)["probabilities"]
        answer = await harness.triton.call(op="infer", model=model, inputs=inputs, outputs=["probabilities"])
        assert answer["ok"], answer
        assert list(answer["outputs"]) == ["probabilities"], "only the requested output comes back"
        np.testing.assert_allclose(answer["outputs"]["probabilities"]["data"], expected, rtol=1e-5, atol=1e-6)


async def test_tritonclient_reads_metadata_and_readiness(harness, models):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 3)))
    answer = await harness.triton.call(op="metadata", model=model)
    assert answer["ok"], answer
    metadata = answer["metadata"]
    assert metadata["name"] == model and metadata["versions"] == ["3"]
    (tensor,) = metadata["inputs"]
    assert tensor["name"] == "input" and tensor["datatype"] == "FP32"
    assert [int(d) for d in tensor["shape"]] == [-1, len(trained.feature_names)]
    outputs = {o["name"]: o for o in metadata["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES"
    assert [int(d) for d in outputs["probabilities"]["shape"]] == [-1, 3]
    # Triton's own proto has no metadata parameters (tritonclient drops them): read them with ours.
    parameters = (await harness.stub.ModelMetadata(oip.ModelMetadataRequest(name=model))).parameters
    assert json.loads(parameters["class_labels"].string_param) == trained.class_labels
    assert json.loads(parameters["feature_names"].string_param) == trained.feature_names
    assert parameters["task"].string_param == "classification"

    assert (await harness.triton.call(op="ready", model=model))["ready"] is True
    assert (await harness.triton.call(op="ready", model=model, version="3"))["ready"] is True
    assert (await harness.triton.call(op="ready", model=model, version="9"))["ready"] is False
    assert (await harness.triton.call(op="ready", model="no-such-model"))["ready"] is False
    server = await harness.triton.call(op="server")
    assert server["live"] is True and server["ready"] is True
    missing = await harness.triton.call(op="metadata", model="no-such-model")
    assert not missing["ok"] and missing["status"] == "StatusCode.NOT_FOUND"


async def test_regression_answers_prediction(harness, models):
    model = f"diabetes-{uuid.uuid4().hex[:8]}"
    trained = models.diabetes
    await harness.serve(state(model, 1, version(trained, 1)))
    rows = trained.rows[:3]
    answer = await harness.triton.call(
        op="infer",
        model=model,
        inputs=[{"name": "input", "datatype": "FP32", "shape": [3, rows.shape[1]], "data": rows.tolist()}],
    )
    assert answer["ok"], answer
    assert list(answer["outputs"]) == ["prediction"]
    assert answer["outputs"]["prediction"]["shape"] == [3]
    np.testing.assert_allclose(
        answer["outputs"]["prediction"]["data"], trained.expected(rows)["prediction"], rtol=1e-5
    )


# --- bad input: the right code, a message naming the problem, and the server keeps answering -------


def _bad_requests(model: str, trained: Trained):
    width = len(trained.feature_names)
    row = trained.rows[:1]

    def base(**kwargs) -> oip.ModelInferRequest:
        return oip.ModelInferRequest(model_name=model, **kwargs)

    wrong_type = base()
    wrong_type.inputs.add(name="input", datatype="BYTES", shape=[1, width]).contents.bytes_contents.extend(
        [b"x"] * width
    )
    wrong_shape = request(model, np.zeros((1, width + 1), np.float32))
    wrong_shape.inputs[0].shape[:] = [1, width + 1]
    flat = base()
    flat.inputs.add(name="input", datatype="FP32", shape=[width]).contents.fp32_contents.extend([0.0] * width)
    missing = base()
    for feature in trained.feature_names[1:]:
        missing.inputs.add(name=feature, datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    unknown = request(model, row)
    unknown.inputs[0].name = "inputs"
    raw_short = request(model, row)
    raw_short.raw_input_contents[0] = raw_short.raw_input_contents[0][:-4]
    typed_count = base()
    typed_count.inputs.add(name="input", datatype="FP32", shape=[2, width]).contents.fp32_contents.extend(
        [0.0] * width
    )
    wrong_field = base()
    wrong_field.inputs.add(name="input", datatype="FP32", shape=[1, width]).contents.fp64_contents.extend(
        [0.0] * width
    )
    raw_count = request(model, row)
    raw_count.raw_input_contents.append(b"\0\0\0\0")
    no_inputs = base()
    bad_output = request(model, row)
    bad_output.outputs.add(name="logits")
    too_many_rows = request(model, np.zeros((2_001, width), np.float32))
    too_many_bytes = base()
    too_many_bytes.inputs.add(name="input", datatype="FP64", shape=[2_000, width])
    too_many_bytes.raw_input_contents.append(bytes(2_000 * width * 8))
    return [
        (
            "unknown model",
            oip.ModelInferRequest(model_name="no-such-model"),
            grpc.StatusCode.NOT_FOUND,
            "no-such-model",
        ),
        ("unknown version", request(model, row, version="42"), grpc.StatusCode.NOT_FOUND, "no version '42'"),
        ("wrong datatype", wrong_type, grpc.StatusCode.INVALID_ARGUMENT, "datatype 'BYTES'"),
        ("wrong width", wrong_shape, grpc.StatusCode.INVALID_ARGUMENT, f"expected [-1, {width}]"),
        ("one-dimensional input", flat, grpc.StatusCode.INVALID_ARGUMENT, "has shape"),
        (
            "missing feature",
            missing,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"missing input '{trained.feature_names[0]}'",
        ),
        ("unknown input", unknown, grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'inputs'"),
        ("raw size mismatch", raw_short, grpc.StatusCode.INVALID_ARGUMENT, "needs"),
        ("typed count mismatch", typed_count, grpc.StatusCode.INVALID_ARGUMENT, "needs"),
        ("contents in the wrong field", wrong_field, grpc.StatusCode.INVALID_ARGUMENT, "fp64_contents"),
        (
            "raw entries per input",
            raw_count,
            grpc.StatusCode.INVALID_ARGUMENT,
            "raw_input_contents has 2 entries",
        ),
        ("no inputs", no_inputs, grpc.StatusCode.INVALID_ARGUMENT, "no inputs"),
        ("unknown output", bad_output, grpc.StatusCode.INVALID_ARGUMENT, "unknown output 'logits'"),
        ("too many rows", too_many_rows, grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 2000"),
        ("too many bytes", too_many_bytes, grpc.StatusCode.RESOURCE_EXHAUSTED, "bytes"),
    ]


async def test_bad_input_gets_its_code_and_the_server_keeps_answering(
    kafka, topics_bus, artifact_settings, harness, models
):
    app = InferenceApp(
        server_settings(max_request_rows=2_000, max_request_bytes=200_000, log_enabled=False),
        kafka=kafka,
        bus=topics_bus,
        store=open_store(artifact_settings),
    )
    model = name()
    trained = models.wine_a
    await harness.publish(state(model, 1, version(trained, 1)))
    port = await app.start(ready_timeout_s=60)
    try:
        await eventually(lambda: app.core.generation(model) == 1, what="model served")
        async with open_channel(f"127.0.0.1:{port}", traced=False) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for case, message, code, words in _bad_requests(model, trained):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ModelInfer(message, timeout=10)
                assert caught.value.code() == code, f"{case}: {caught.value.code()} {caught.value.details()}"
                assert words in caught.value.details(), f"{case}: {caught.value.details()!r} lacks {words!r}"
                answer = await stub.ModelInfer(request(model, trained.rows[:1]), timeout=10)
                assert answer.model_version == "1", f"the server stopped answering after {case}"
        assert (
            sample("mlops_inference_requests_total", model=model, version="1", code="INVALID_ARGUMENT") >= 10
        )
        assert sample("mlops_inference_requests_total", model="_unknown", version="", code="NOT_FOUND") >= 1
    finally:
        await app.stop()


async def test_a_model_known_but_not_loaded_is_unavailable(harness, models):
    model = name()
    bad = version(models.wine_a, 1)
    bad.artifact_uri, bad.artifact_sha256 = models.not_onnx_uri, models.not_onnx_sha256
    await harness.publish(state(model, 1, bad))
    unavailable = None
    for _ in range(100):
        try:
            await harness.stub.ModelInfer(request(model, models.wine_a.rows[:1]), timeout=10)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE and "cannot be loaded" in error.details():
                unavailable = error
                break
        await asyncio.sleep(0.1)
    assert unavailable is not None, "a model whose only version cannot load should answer UNAVAILABLE"
    assert "ONNX" in unavailable.details()
    assert harness.app.core.ready, "no replica could load it: this one stays in service for the others"


# --- desired state: served, replaced, ignored when older, removed, refused when bad ---------------


async def test_desired_state_generations_tombstones_and_bad_artifacts(harness, models):
    model = name()
    a, b = models.wine_a, models.wine_b
    rows = a.rows[:2]
    await harness.serve(state(model, 1, version(a, 1)))
    answer = await harness.stub.ModelInfer(request(model, rows))
    assert answer.model_version == "1"
    np.testing.assert_allclose(probabilities(answer), a.expected(rows)["probabilities"], rtol=1e-5, atol=1e-6)

    await harness.serve(state(model, 5, version(b, 2)))
    answer = await harness.stub.ModelInfer(request(model, rows))
    assert answer.model_version == "2"
    np.testing.assert_allclose(probabilities(answer), b.expected(rows)["probabilities"], rtol=1e-5, atol=1e-6)

    # An older generation arrives late: ignored. A marker state after it proves it was read.
    await harness.publish(state(model, 3, version(a, 1)))
    marker = name()
    await harness.serve(state(marker, 1, version(a, 1)))
    assert harness.app.core.generation(model) == 5
    assert (await harness.stub.ModelInfer(request(model, rows))).model_version == "2"

    # A wrong sha256 and bytes that are no ONNX model are refused; version 2 keeps serving.
    failures = sample("mlops_inference_load_failures_total", model=model, reason="IntegrityError")
    wrong_sha = version(a, 3)
    wrong_sha.artifact_sha256 = "0" * 64
    await harness.publish(state(model, 6, wrong_sha))
    await eventually(
        lambda: (
            sample("mlops_inference_load_failures_total", model=model, reason="IntegrityError") > failures
        ),
        what="sha mismatch refused",
    )
    not_onnx = version(a, 4)
    not_onnx.artifact_uri, not_onnx.artifact_sha256 = models.not_onnx_uri, models.not_onnx_sha256
    await harness.publish(state(model, 7, not_onnx))
    await eventually(
        lambda: sample("mlops_inference_load_failures_total", model=model, reason="ModelRejected") >= 1,
        what="non-ONNX artifact refused",
    )
    assert harness.app.core.generation(model) == 5
    assert (await harness.stub.ModelInfer(request(model, rows))).model_version == "2"

    # A tombstone: the model no longer serves.
    await harness.tombstone(model)
    await eventually(lambda: model not in harness.app.core.models, what="tombstone applied")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.ModelInfer(request(model, rows))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_new_replica_reads_the_whole_state(kafka, topics_bus, artifact_settings, harness, models):
    """Replicas share no offsets: a second server started later serves what the first serves."""
    model = name()
    await harness.serve(state(model, 4, version(models.wine_a, 1, 70), version(models.wine_b, 2, 30, CANARY)))
    replica = InferenceApp(
        server_settings(log_enabled=False), kafka=kafka, bus=topics_bus, store=open_store(artifact_settings)
    )
    await replica.start(ready_timeout_s=60)
    try:
        assert replica.core.generation(model) == 4, "ready only once the whole topic is applied"
        assert sorted(replica.core.models[model].by_version) == ["1", "2"]
    finally:
        await replica.stop()


# --- routing ----------------------------------------------------------------------------------------


async def test_traffic_shares_and_named_versions(harness, models):
    model = name()
    await harness.serve(state(model, 1, version(models.wine_a, 1, 80), version(models.wine_b, 2, 20, CANARY)))
    rows = models.wine_a.rows[:1]
    answers = await asyncio.gather(*(harness.stub.ModelInfer(request(model, rows)) for _ in range(1_000)))
    counts = Counter(answer.model_version for answer in answers)
    # binomial(1000, 0.2): sd 12.6; 60 is almost 5 sd
    assert abs(counts["2"] - 200) <= 60 and counts["1"] + counts["2"] == 1_000, counts
    for _ in range(20):
        assert (await harness.stub.ModelInfer(request(model, rows, version="2"))).model_version == "2"
    assert sample("mlops_inference_traffic_percent", model=model, version="2", role="canary") == 20


async def test_shadow_is_logged_and_does_not_change_the_answer(kafka, harness, models):
    model = name()
    a, b = models.wine_a, models.wine_b
    await harness.serve(state(model, 1, version(a, 1), version(b, 2, 0, SHADOW)))
    topic = harness.bus.topic_prefix + spec_for(monitoring_pb2.InferenceLogged).topic
    rows = a.rows[:1]
    async with raw_reader(kafka, topic) as reader:
        answer = await harness.stub.ModelInfer(request(model, rows, request_id="shadowed-1"))
        assert answer.model_version == "1"
        np.testing.assert_allclose(
            probabilities(answer), a.expected(rows)["probabilities"], rtol=1e-5, atol=1e-6
        )
        seen = await _records(reader, model, want=lambda seen: {r.role for r in seen} >= {PRODUCTION, SHADOW})
    by_role = {record.role: record for record in seen}
    assert by_role[SHADOW].request_id == by_role[PRODUCTION].request_id == "shadowed-1"
    assert by_role[SHADOW].version == 2 and by_role[PRODUCTION].version == 1
    np.testing.assert_allclose(
        by_role[SHADOW].outputs, b.expected(rows)["probabilities"][0], rtol=1e-5, atol=1e-6
    )


async def _records(reader, model: str, *, want, timeout_s: float = 20.0) -> list:
    """InferenceLogged records of `model` read from `reader` until `want(records)` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    seen: list = []
    while loop.time() < deadline:
        batch = await reader.getmany(timeout_ms=200)
        for records in batch.values():
            for record in records:
                message = monitoring_pb2.InferenceLogged.FromString(record.value)
                if message.model == model:
                    seen.extend(message.records)
        if seen and want(seen):
            return seen
    raise AssertionError(f"the inference log of {model} did not show what was expected: {seen}")


# --- batching -----------------------------------------------------------------------------------------


async def test_concurrent_requests_coalesce_into_batches(harness, models):
    model = name()
    await harness.serve(state(model, 1, version(models.wine_a, 1), batch=64, wait_us=20_000))
    rows = models.wine_a.rows
    answers = await asyncio.gather(
        *(harness.stub.ModelInfer(request(model, rows[i : i + 1])) for i in range(48))
    )
    expected = models.wine_a.expected(rows[:48])["probabilities"]
    for i, answer in enumerate(answers):  # each caller gets its own row's answer back
        np.testing.assert_allclose(probabilities(answer)[0], expected[i], rtol=1e-5, atol=1e-6)
    calls = sample("mlops_inference_batch_size_count", model=model, version="1")
    batched_rows = sample("mlops_inference_batch_size_sum", model=model, version="1")
    assert batched_rows == 48, "every row went through exactly one runtime call"
    assert calls < 48 / 2, f"48 concurrent single-row requests took {calls} runtime calls"


# --- the inference log --------------------------------------------------------------------------------


async def test_inference_logged_carries_each_row_and_failures(kafka, harness, models):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 1)))
    topic = harness.bus.topic_prefix + spec_for(monitoring_pb2.InferenceLogged).topic
    rows = trained.rows[:3]
    async with raw_reader(kafka, topic) as reader:
        await harness.stub.ModelInfer(request(model, rows, request_id="logged-7"))
        bad = request(model, rows[:1], request_id="logged-8")
        bad.raw_input_contents[0] = b"\0"
        with pytest.raises(grpc.aio.AioRpcError):
            await harness.stub.ModelInfer(bad)
        records = await _records(reader, model, want=lambda seen: len(seen) >= 4)
    by_id = {record.request_id: record for record in records}
    expected = trained.expected(rows)
    for row in range(3):
        record = by_id[f"logged-7/{row}"]
        assert record.version == 1 and record.role == PRODUCTION and not record.error
        np.testing.assert_allclose(record.features, rows[row], rtol=1e-6)
        np.testing.assert_allclose(record.outputs, expected["probabilities"][row], rtol=1e-5, atol=1e-6)
        assert record.label == trained.class_labels[expected["label"][row]]
        assert record.latency_us > 0 and record.timestamp.seconds > 0
    failed = by_id["logged-8"]
    assert failed.version == 1 and "INVALID_ARGUMENT" in failed.error and not failed.outputs
    # The counter moves once the broker has acknowledged the batch, which may be after a reader saw it.
    await eventually(
        lambda: sample("mlops_inference_log_records_total", model=model) >= 4,
        timeout_s=10,
        what="the logged records counted",
    )


async def test_logging_to_an_unreachable_kafka_drops_and_counts(
    kafka, topics_bus, artifact_settings, harness, models
):
    model = name()
    await harness.serve(state(model, 1, version(models.wine_a, 1)))
    dead = KafkaSettings(bootstrap="127.0.0.1:9", request_timeout_ms=1_000)
    app = InferenceApp(
        server_settings(log_queue_size=20, log_publish_timeout_s=1.0),
        kafka=kafka,
        bus=topics_bus,
        store=open_store(artifact_settings),
        log_kafka=dead,
    )
    port = await app.start(ready_timeout_s=60)
    try:
        async with open_channel(f"127.0.0.1:{port}", traced=False) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            rows = models.wine_a.rows[:1]
            for _ in range(10):
                answers = await asyncio.gather(*(stub.ModelInfer(request(model, rows)) for _ in range(20)))
                assert all(answer.model_version == "1" for answer in answers)
        dropped = sample("mlops_inference_log_dropped_total", model=model, reason="queue_full") + sample(
            "mlops_inference_log_dropped_total", model=model, reason="publish_failed"
        )
        assert dropped >= 150, (
            f"200 requests, a queue of 20 and no Kafka: {dropped} records counted as dropped"
        )
    finally:
        await app.stop()


# --- hot swaps under load ------------------------------------------------------------------------------


async def test_fifty_hot_swaps_under_load_fail_no_request(harness, models):
    model = name()
    a, b = models.wine_a, models.wine_b
    await harness.serve(state(model, 1, version(a, 1), batch=16, wait_us=500))
    rows = a.rows[:2]
    stop = asyncio.Event()
    outcomes: Counter = Counter()
    failures: list[str] = []

    async def client() -> None:
        while not stop.is_set():
            try:
                answer = await harness.stub.ModelInfer(request(model, rows), timeout=10)
                outcomes[answer.model_version] += 1
            except grpc.aio.AioRpcError as error:
                failures.append(f"{error.code().name}: {error.details()}")

    clients = [asyncio.create_task(client()) for _ in range(8)]
    try:
        for generation in range(2, 52):
            serving = version(b, 2) if generation % 2 else version(a, 1)
            # alternate batching too, so that batchers are replaced as well as sessions
            await harness.serve(
                state(model, generation, serving, batch=16 if generation % 3 else 0, wait_us=500)
            )
            before = sum(outcomes.values())
            await eventually(
                lambda before=before: sum(outcomes.values()) > before + 5, what="requests flowing"
            )
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert failures == [], failures[:5]
    assert outcomes["1"] > 0 and outcomes["2"] > 0, outcomes
    assert sample("mlops_inference_swaps_total", model=model) >= 51


# --- tracing ---------------------------------------------------------------------------------------------


async def test_desired_state_and_requests_continue_their_traces(harness, models, jaeger_url):
    model = name()
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("deployer publishes") as span:
        await harness.publish(state(model, 1, version(models.wine_a, 1)))
        deploy_trace = format(span.get_span_context().trace_id, "032x")
    await eventually(lambda: harness.app.core.generation(model) == 1, what="served")
    client_trace = uuid.uuid4().hex
    traceparent = f"00-{client_trace}-{uuid.uuid4().hex[:16]}-01"
    answer = await harness.triton.call(
        op="infer",
        model=model,
        headers={"traceparent": traceparent},
        inputs=[
            {"name": "input", "datatype": "FP32", "shape": [1, 13], "data": models.wine_a.rows[:1].tolist()}
        ],
    )
    assert answer["ok"], answer
    trace.get_tracer_provider().force_flush()

    def spans_of(trace_id: str):
        return [s for s in jaeger_trace(jaeger_url, trace_id) or []]

    deploy = await eventually(
        lambda: (
            (found := spans_of(deploy_trace)) and any(s.name.startswith("load ") for s in found) and found
        ),
        timeout_s=30,
        what="the desired state's trace in Jaeger",
    )
    names = {s.name for s in deploy}
    assert f"process {harness.bus.topic_prefix}mlops.deployments.desired" in names
    load = next(s for s in deploy if s.name == f"load {model} v1")
    parents = [s for s in deploy if s.span_id == load.parent_id]
    assert parents and parents[0].name.startswith("process "), "loading is a child of the CONSUMER span"
    assert parents[0].parent_id is not None, "the CONSUMER span continues the publisher's trace"
    served = await eventually(
        lambda: (found := spans_of(client_trace)) and any("ModelInfer" in s.name for s in found) and found,
        timeout_s=30,
        what="the request's span in Jaeger",
    )
    infer = next(s for s in served if "ModelInfer" in s.name)
    assert infer.attributes.get("mlops.model.name") == model
    assert str(infer.attributes.get("mlops.model.version")) == "1"


# --- text features: vocabularies from the registry --------------------------------------------------


async def test_text_features_are_encoded_with_the_registered_vocabulary(
    kafka, topics_bus, artifact_settings, harness, models
):
    from mlops.grpc import open_channel
    from mlops.registry.v1 import registry_pb2 as pb
    from mlops.registry.v1 import registry_pb2_grpc

    store = open_store(artifact_settings)
    frame = load_wine(as_frame=True).frame[["alcohol", "hue", "target"]]
    frame.insert(
        1, "colour", np.where(frame["target"] == 0, "red", np.where(frame["target"] == 1, "white", "rose"))
    )
    trained = await _train(store, frame, "classification", seed=4, hidden=(8,))
    categories = {"colour": ["red", "rose", "white"]}
    assert trained.feature_names == ["alcohol", "colour", "hue"]
    model = name()
    settings = InferenceSettings()
    channel = open_channel(settings.registry_addr)
    try:
        registered = await registry_pb2_grpc.RegistryStub(channel).RegisterModelVersion(
            pb.RegisterModelVersionRequest(
                model=model,
                run_id=uuid.uuid4().hex,
                artifact_uri=trained.uri,
                artifact_sha256=trained.sha256,
                signature=pb.ModelSignature(
                    feature_names=trained.feature_names,
                    class_labels=trained.class_labels,
                    task="classification",
                    categories={k: pb.Vocabulary(values=v) for k, v in categories.items()},
                ),
            ),
            timeout=10,
        )
    finally:
        await channel.close()
    number = registered.model_version.version
    app = InferenceApp(
        server_settings(signatures_from_registry=True, log_enabled=False),
        kafka=kafka,
        bus=topics_bus,
        store=open_store(artifact_settings),
    )
    await harness.publish(state(model, 1, version(trained, number)))
    port = await app.start(ready_timeout_s=60)
    try:
        await eventually(lambda: app.core.generation(model) == 1, what="served")
        colours = ["white", "red", "violet"]  # violet: never seen, the trainer's unseen code
        codes = np.array([[13.0, 2, 1.0], [13.0, 0, 1.0], [13.0, -1, 1.0]], np.float32)
        request_ = oip.ModelInferRequest(model_name=model)
        request_.inputs.add(name="alcohol", datatype="FP32", shape=[3]).contents.fp32_contents.extend(
            [13.0] * 3
        )
        request_.inputs.add(name="colour", datatype="BYTES", shape=[3]).contents.bytes_contents.extend(
            [c.encode() for c in colours]
        )
        request_.inputs.add(name="hue", datatype="FP32", shape=[3]).contents.fp32_contents.extend([1.0] * 3)
        async with open_channel(f"127.0.0.1:{port}", traced=False) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            answer = await stub.ModelInfer(request_, timeout=10)
            metadata = await stub.ModelMetadata(oip.ModelMetadataRequest(name=model), timeout=10)
        np.testing.assert_allclose(
            probabilities(answer), trained.expected(codes)["probabilities"], rtol=1e-5, atol=1e-6
        )
        assert json.loads(metadata.parameters["categories"].string_param) == categories
    finally:
        await app.stop()


async def test_a_cheap_version_answers_on_the_event_loop_while_a_slow_one_runs_on_the_threads(
    harness, models, artifact_settings
):
    """Where a call runs follows its cost (`inline_run_us`): the wine model runs on the event loop,
    its slow twin (same answers, ~0.1 s a call, slow from its warm-up) on the inference threads,
    so that requests to the cheap version are answered while the slow one computes."""
    cheap = models.wine_a
    slow_bytes = slowed(cheap.onnx, iterations=20_000)
    stored = await open_store(artifact_settings).put_bytes("models/inference-tests", "model.onnx", slow_bytes)
    slow = Trained(
        cheap.task, slow_bytes, stored.uri, stored.sha256, cheap.feature_names, cheap.class_labels, cheap.rows
    )
    model = name()
    await harness.serve(state(model, 1, version(cheap, 1), version(slow, 2, percent=0), batch=64))
    by_version = harness.app.core.models[model].by_version
    assert by_version["1"].batcher.runs_inline(1), "the wine model costs less than a thread hop"
    assert not by_version["2"].batcher.runs_inline(1), "the slow twin was timed slow at its warm-up"

    rows = cheap.rows
    finished: list[str] = []

    async def call(version_text: str, row: int) -> oip.ModelInferResponse:
        answer = await harness.stub.ModelInfer(request(model, rows[row : row + 1], version=version_text))
        finished.append(version_text)
        return answer

    slow_call = asyncio.create_task(call("2", 0))
    cheap_answers = [await call("1", i) for i in range(1, 6)]  # one after another, while v2 computes
    slow_answer = await slow_call
    assert finished[:5] == ["1"] * 5, f"the cheap version waited for the slow one: {finished}"
    expected = cheap.expected(rows[:6])["probabilities"]
    np.testing.assert_allclose(probabilities(slow_answer)[0], expected[0], rtol=1e-5, atol=1e-6)
    for i, answer in enumerate(cheap_answers, 1):
        np.testing.assert_allclose(probabilities(answer)[0], expected[i], rtol=1e-5, atol=1e-6)


# --- readiness, refused desired states, the inference log's byte bound ----------------------------------


async def _health(port: int) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with open_channel(f"127.0.0.1:{port}", traced=False) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_an_artifact_no_replica_can_load_is_dead_lettered_and_the_replica_stays_ready(
    kafka, artifact_settings, models
):
    """Its own topics: every other test's desired states would count towards this replica's readiness.
    Bytes that are not a model would be refused by every replica: the state is dead-lettered and the
    replica keeps serving what it can, rather than leave the Service with no replica at all."""
    from tests.integration.bus_helpers import read_until

    bus = BusSettings(topic_prefix=f"tests.inference.ready.{uuid.uuid4().hex[:8]}.")
    publisher = EventPublisher(kafka, bus, source="mlops-deployer-tests")
    await publisher.start()
    good, broken = name(), name()
    bad = version(models.wine_a, 1)
    bad.artifact_uri, bad.artifact_sha256 = models.not_onnx_uri, models.not_onnx_sha256
    desired = bus.topic_prefix + spec_for(deployment_pb2.DesiredState).topic
    app = InferenceApp(
        server_settings(log_enabled=False), kafka=kafka, bus=bus, store=open_store(artifact_settings)
    )
    try:
        async with raw_reader(kafka, desired + ".dlq") as dead_letters:
            await publisher.publish(state(good, 1, version(models.wine_a, 1)))
            await publisher.publish(state(broken, 1, bad))
            port = await app.start(ready_timeout_s=60)
            letter = await read_until(dead_letters, lambda record: record.key == broken.encode())
        headers = dict(letter.headers)
        assert b"ONNX" in headers["mlops_dlq_reason"], headers
        assert headers["mlops_dlq_error_type"] == b"ModelRejected"
        assert await _health(port) == "SERVING"
        async with open_channel(f"127.0.0.1:{port}", traced=False) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ServerReady(oip.ServerReadyRequest())).ready
            assert not (await stub.ModelReady(oip.ModelReadyRequest(name=broken))).ready
            answer = await stub.ModelInfer(request(good, models.wine_a.rows[:1]), timeout=10)
            assert answer.model_version == "1", "what loaded keeps serving"
    finally:
        await app.stop()
        await publisher.stop()


async def test_a_replica_that_cannot_read_what_it_is_asked_to_serve_is_not_ready(
    kafka, artifact_settings, models, monkeypatch
):
    """A refusal that is this replica's own (a wrong S3 secret: PERMISSION_DENIED) takes it out of
    service: another replica may well serve the same state. It comes back once the state is withdrawn."""
    from tests.integration.bus_helpers import read_until

    bus = BusSettings(topic_prefix=f"tests.inference.denied.{uuid.uuid4().hex[:8]}.")
    publisher = EventPublisher(kafka, bus, source="mlops-deployer-tests")
    await publisher.start()
    model = name()
    desired = bus.topic_prefix + spec_for(deployment_pb2.DesiredState).topic
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    app = InferenceApp(
        server_settings(log_enabled=False), kafka=kafka, bus=bus, store=open_store(artifact_settings)
    )
    try:
        async with raw_reader(kafka, desired + ".dlq") as dead_letters:
            await publisher.publish(state(model, 1, version(models.wine_a, 1)))
            port = await app.start(ready_timeout_s=60)
            letter = await read_until(dead_letters, lambda record: record.key == model.encode())
        assert dict(letter.headers)["mlops_dlq_error_type"] == b"PermissionDenied"
        assert await _health(port) == "NOT_SERVING"
        async with open_channel(f"127.0.0.1:{port}", traced=False) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert not (await stub.ServerReady(oip.ServerReadyRequest())).ready
            await publisher.publish_encoded(desired, model, None, [])  # type: ignore[arg-type]
            await eventually(lambda: not app.core.not_ready(), what="the state withdrawn")
            deadline = asyncio.get_running_loop().time() + 10  # health follows in a task of its own
            while await _health(port) != "SERVING":
                assert asyncio.get_running_loop().time() < deadline, "health did not turn SERVING"
                await asyncio.sleep(0.05)
    finally:
        await app.stop()
        await publisher.stop()


async def test_a_large_request_is_logged_in_messages_under_the_byte_bound(
    kafka, topics_bus, artifact_settings, harness, models
):
    model = name()
    await harness.serve(state(model, 1, version(models.wine_a, 1)))
    app = InferenceApp(
        server_settings(log_max_message_bytes=8_192, log_batch_records=10),
        kafka=kafka,
        bus=topics_bus,
        store=open_store(artifact_settings),
    )
    topic = topics_bus.topic_prefix + spec_for(monitoring_pb2.InferenceLogged).topic
    rows = np.repeat(models.wine_a.rows, 10, axis=0)[:600]
    port = await app.start(ready_timeout_s=60)
    try:
        async with (
            raw_reader(kafka, topic) as reader,
            open_channel(f"127.0.0.1:{port}", traced=False) as channel,
        ):
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            await stub.ModelInfer(request(model, rows, request_id="big-1"), timeout=10)
            sizes: list[int] = []
            seen: list = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while len(seen) < 600 and loop.time() < deadline:
                for records in (await reader.getmany(timeout_ms=200)).values():
                    for record in records:
                        message = monitoring_pb2.InferenceLogged.FromString(record.value)
                        if message.model == model:
                            sizes.append(len(record.value))
                            seen.extend(message.records)
        assert [r.request_id for r in seen] == [f"big-1/{i}" for i in range(600)], len(seen)
        assert len(sizes) > 1 and max(sizes) <= 8_192, sizes
    finally:
        await app.stop()
