"""What the rollout tests share: a first version trained and deployed through the platform, a
candidate registered beside it as the trainer registers one (its artifact changed on purpose: slow,
erroring, ...), and waiting until one version alone answers the client.

Everything goes through public surfaces: the CLI, the registry's gRPC API, the artifact store, the
Open Inference Protocol and the platform's topics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
from sklearn.datasets import load_wine

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from mlops.demo.loop import EventTail, Traffic, wait_ready
from mlops.events.v1 import common_pb2, deployment_pb2
from mlops.grpc import open_channel
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc as registry_grpc
from mlops.settings import ArtifactSettings
from mlops.store import open_store
from tests.e2e.conftest import mlops
from tests.e2e.erroring_model import erroring
from tests.e2e.slow_model import per_call_seconds, session, slowed
from tests.integration.conftest import eventually

INFERENCE = "127.0.0.1:8001"
INFERENCE_METRICS = os.environ.get("MLOPS_INFERENCE_METRICS_URL", "http://127.0.0.1:8002/metrics")
REGISTRY = os.environ.get("MLOPS_REGISTRY_ADDR", "127.0.0.1:50051")


@dataclass
class Wine:
    frame: pd.DataFrame
    features: np.ndarray
    labels: list[str]


def wine() -> Wine:
    frame = load_wine(as_frame=True).frame
    columns = [c for c in frame.columns if c != "target"]
    return Wine(frame, frame[columns].to_numpy(np.float32), [str(v) for v in frame["target"]])


def apply_spec(tmp_path: Path, text: str) -> None:
    """`mlops apply` of a spec's text (a new spec version when it changed)."""
    spec = tmp_path / f"spec-{uuid.uuid4().hex[:8]}.yaml"
    spec.write_text(text)
    mlops("apply", "-f", str(spec))


async def deploy_first_version(
    model: str, dataset: str, data: Wine, tmp_path: Path, tail: EventTail
) -> deployment_pb2.ModelDeployed:
    """Commit the data set (the spec applied already): the platform trains, evaluates and deploys v1;
    returns once the inference server answers with it."""
    path = tmp_path / f"{dataset}.csv"
    data.frame.to_csv(path, index=False)
    mlops("data", "commit", str(path), "--dataset", dataset)
    first = (await tail.wait_for(deployment_pb2.ModelDeployed, timeout_s=200)).event
    assert first.version == 1 and first.previous_version == 0, first
    await wait_ready(model, first.version, address=INFERENCE)
    return first


def client(model: str, data: Wine, *, rate_per_s: float = 40) -> Traffic:
    """A client calling the model by name, as production callers do (no version, no truth)."""
    return Traffic(
        model=model, features=data.features, labels=data.labels, rate_per_s=rate_per_s, publish_truth=False
    )


class VersionCaller:
    """Calls one version of a model by its number at a steady rate (batch-1 rows of the data set),
    counting answers and failures by status: what the version itself answered, whatever the
    traffic split does with calls by name."""

    def __init__(self, model: str, version: int, features: np.ndarray, *, rate_per_s: float = 10) -> None:
        self.model, self.version = model, str(version)
        self.features = np.asarray(features, dtype=np.float32)
        self.interval_s = 1.0 / rate_per_s
        self.answered = 0
        self.failed: Counter = Counter()
        self.messages: list[str] = []
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"calls of {self.model} v{self.version}")

    async def stop(self) -> VersionCaller:
        self._stopping.set()
        if self._task is not None:
            await self._task
        return self

    async def _run(self) -> None:
        async with open_channel(INFERENCE, traced=False) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            index = 0
            while not self._stopping.is_set():
                row = self.features[index % len(self.features)]
                index += 1
                request = oip.ModelInferRequest(model_name=self.model, model_version=self.version)
                tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, len(row)])
                tensor.contents.fp32_contents.extend(row.tolist())
                try:
                    reply = await stub.ModelInfer(request, timeout=5.0)
                except grpc.aio.AioRpcError as error:
                    self.failed[error.code().name] += 1
                    if len(self.messages) < 20:
                        self.messages.append(f"{error.code().name}: {error.details()}")
                else:
                    assert reply.model_version == self.version, reply.model_version
                    self.answered += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.interval_s)


async def base_artifact(model: str, version: int) -> tuple[pb.ModelVersion, bytes]:
    """A registered version and its ONNX bytes, checked against the registry's digest."""
    async with open_channel(REGISTRY) as channel:
        base = await registry_grpc.RegistryStub(channel).GetModelVersion(
            pb.GetModelVersionRequest(model=model, version=version), timeout=10
        )
    data = await open_store(ArtifactSettings()).get_bytes(base.artifact_uri, base.artifact_sha256)
    return base, data


async def register_candidate(
    base: pb.ModelVersion, artifact: bytes, *, params: dict[str, str], description: str
) -> pb.ModelVersion:
    """`artifact` stored and registered as the trainer does it: content addressed under
    `models/<model>/`, a run, then the version with the base's data set, signature, profile and
    metrics (so that nothing but the artifact tells it from the base)."""
    model = base.model
    ref = await open_store(ArtifactSettings()).put_bytes(f"models/{model}", "model.onnx", artifact)
    async with open_channel(REGISTRY) as channel:
        registry = registry_grpc.RegistryStub(channel)
        run_id = uuid.uuid4().hex
        await registry.CreateRun(
            pb.CreateRunRequest(
                run_id=run_id,
                model=model,
                spec_version=base.spec_version,
                dataset=base.dataset,
                dataset_version=base.dataset_version,
                dataset_sha256=base.dataset_sha256,
                params=params,
                trigger=common_pb2.TRAINING_TRIGGER_MANUAL,
            ),
            timeout=10,
        )
        registered = await registry.RegisterModelVersion(
            pb.RegisterModelVersionRequest(
                model=model,
                run_id=run_id,
                spec_version=base.spec_version,
                dataset=base.dataset,
                dataset_version=base.dataset_version,
                dataset_sha256=base.dataset_sha256,
                artifact_uri=ref.uri,
                artifact_sha256=ref.sha256,
                artifact_size_bytes=ref.size,
                profile_uri=base.profile_uri,
                profile_sha256=base.profile_sha256,
                signature=base.signature,
                metrics=base.metrics,
                description=description,
            ),
            timeout=10,
        )
        version = registered.model_version
        await registry.FinishRun(
            pb.FinishRunRequest(
                run_id=run_id,
                status=pb.RUN_STATUS_SUCCEEDED,
                metrics=base.metrics,
                model_version=version.version,
            ),
            timeout=10,
        )
        return version


async def register_slow_candidate(
    model: str, base_version: int, features: np.ndarray, *, iterations: int, max_p99_ms: float
) -> pb.ModelVersion:
    """The base version's graph behind a busy loop (`slow_model`), checked to answer exactly as the
    base does and to take at least 2.5 times `max_p99_ms` a call before it is registered."""
    base, original = await base_artifact(model, base_version)
    slow = slowed(original, iterations=iterations)
    # Off the event loop, so that the client's traffic keeps its pace meanwhile.
    seconds = await asyncio.to_thread(_same_answers, original, slow, features)
    assert seconds * 1000 > 2.5 * max_p99_ms, f"the slow model takes only {seconds * 1000:.1f} ms a call"
    return await register_candidate(
        base,
        slow,
        params={"slowed_from": str(base.version), "iterations": str(iterations)},
        description=f"v{base.version} with {iterations} loop iterations in front: slow on purpose",
    )


async def register_erroring_candidate(model: str, base_version: int, features: np.ndarray) -> pb.ModelVersion:
    """The base version's graph behind a Gather that fails on any row that is not all zeros
    (`erroring_model`): it passes the inference server's warm-up and fails every real call."""
    base, original = await base_artifact(model, base_version)
    bad = erroring(original)
    await asyncio.to_thread(_fails_on_rows_only, original, bad, features)
    return await register_candidate(
        base,
        bad,
        params={"erroring_from": str(base.version)},
        description=f"v{base.version} failing every call whose rows are not zeros: erroring on purpose",
    )


async def register_twin_candidate(model: str, base_version: int) -> pb.ModelVersion:
    """The base version's graph, answering as it does, under other bytes (its doc string names it)."""
    import onnx

    base, original = await base_artifact(model, base_version)
    twin = onnx.load_from_string(original)
    twin.doc_string = f"a twin of v{base.version}"
    return await register_candidate(
        base,
        twin.SerializeToString(),
        params={"twin_of": str(base.version)},
        description=f"v{base.version}'s graph under other bytes",
    )


def _same_answers(original: bytes, changed: bytes, features: np.ndarray) -> float:
    """Checks that the changed model answers exactly as the original (so that a rollback can only be
    for its latency) and returns its time for one row."""
    for before, after in zip(
        session(original).run(None, {"input": features}),
        session(changed).run(None, {"input": features}),
        strict=True,
    ):
        np.testing.assert_array_equal(before, after)
    return per_call_seconds(changed, features[0])


def _fails_on_rows_only(original: bytes, bad: bytes, features: np.ndarray) -> None:
    zeros = np.zeros((8, features.shape[1]), dtype=np.float32)
    for before, after in zip(
        session(original).run(None, {"input": zeros}), session(bad).run(None, {"input": zeros}), strict=True
    ):
        np.testing.assert_array_equal(before, after)
    runner = session(bad)
    try:
        runner.run(None, {"input": features[:1]})
    except Exception as error:  # onnxruntime's own error classes
        assert "Gather" in str(error), error
    else:
        raise AssertionError("the erroring model answered a real row")


async def only_version_answers(traffic: Traffic, version: str, *, answers: int, timeout_s: float) -> None:
    """Wait until `answers` answers in a row came from `version` and from no other."""
    marks: dict[str, object] = {}

    def settled() -> bool:
        others = sum(n for v, n in traffic.stats.answered.items() if v != version)
        if marks.get("others") != others:
            marks.update(others=others, since=traffic.stats.answered[version])
        return traffic.stats.answered[version] - marks["since"] >= answers

    await eventually(settled, timeout_s=timeout_s, interval_s=0.1, what=f"only v{version} answering")


_SERIES = re.compile(r"^mlops_inference_requests_total\{([^}]*)\}\s+([0-9.eE+-]+)$")


def served_requests(model: str) -> Counter:
    """The inference server's own count of ModelInfer calls of `model`, by (version, code)."""
    with urllib.request.urlopen(INFERENCE_METRICS, timeout=5) as reply:
        text = reply.read().decode()
    counts: Counter = Counter()
    for line in text.splitlines():
        match = _SERIES.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("model") == model:
            counts[(labels.get("version", ""), labels.get("code", ""))] += float(match.group(2))
    return counts
