"""Shared by the test_inference_* modules: the inference server against the real stack: Kafka
(desired state in, inference log out), S3 (artifacts), the registry service, Jaeger; and an unmodified
`tritonclient.grpc` as the client.

Models are trained here by the trainer's own code (`services.trainer.training.train`) on
scikit-learn's wine (classification) and diabetes (regression) data, stored content-addressed in
the stack's artifact store, and named by DesiredState records published on each test module's own
topics (a fresh prefix per run, deleted afterwards), so that the server reads a history of its own.

tritonclient pins protobuf < 7 and registers the same `inference` descriptors as our generated
code, so it runs in its own virtual environment (tests/bench/setup.sh makes it) as a subprocess
that takes one JSON call per line.

Its fixtures are made available to a test module by importing them there.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY
from sklearn.datasets import load_diabetes, load_wine

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc
from mlops.bus import EventPublisher
from mlops.event_catalog import spec_for
from mlops.events.v1 import common_pb2, deployment_pb2, monitoring_pb2
from mlops.grpc import open_channel
from mlops.settings import BusSettings, GrpcClientSettings
from mlops.store import open_store
from services.inference.app import InferenceApp
from services.inference.settings import InferenceSettings
from services.trainer.training import TrainingParams, TrainRequest, train
from tests.integration.conftest import eventually

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
        # free ports: the stack's own inference server holds 8001 and 8000 (never through the
        # environment, which the services a test restarts would inherit)
        "grpc_port": 0,
        "http_port": 0,
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


# --- REST (KServe V2 over HTTP) and ModelStreamInfer -------------------------------------------------
