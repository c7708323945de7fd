"""The inference benchmark's model and contenders: the platform's server (log on and off, TLS with and
without authorisation), MLServer, the two grpcio floors, and onnxruntime in-process as the ceiling.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pandas as pd

from inference import grpc_service_pb2 as oip
from tests.bench.harness import CACHE, REPO, BenchError, Figures, free_port, running, wait_until
from tests.bench.inference_load import (
    MODEL,
    PLAINTEXT,
    check_answer,
    check_refused,
    measure,
    model_ready,
    secured,
    server_env,
)
from tests.bench.inference_rest import check_rest_answer, infer_url, measure_rest, rest_body, rest_ready

MLSERVER_VENV = CACHE / "mlserver-venv"
TOPIC_PREFIX = "bench.inference."
SAMPLED_1PCT = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
PLATFORM = {
    # name: (inference log on, TLS, authorisation)
    "platform-log": (True, False, False),
    "platform-nolog": (False, False, False),
    "platform-tls": (False, True, True),
    "platform-tls-noauth": (False, True, False),
    "platform-rest": (False, False, False),
}
REST = ("platform-rest", "mlserver-rest")
"""Measured over HTTP/REST (wrk) instead of gRPC (ghz)."""


# --- the model ------------------------------------------------------------------------------------


def train_model(folder: Path) -> dict:
    """The demo's spec on wine, by the trainer's code: ONNX bytes, features, classes, a payload row."""
    from sklearn.datasets import load_wine

    from services.trainer.training import TrainingParams, TrainRequest, train

    frame = load_wine(as_frame=True).frame
    frame["target"] = frame["target"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    data = folder / "wine.csv"
    frame.to_csv(data, index=False)
    outcome = train(
        TrainRequest(
            model=MODEL,
            task="classification",
            label="target",
            features=[],
            data_path=str(data),
            data_format="csv",
            params=TrainingParams(hidden_layers=(64, 32), epochs=30, seed=7),
            device="cpu",
        )
    )
    if not outcome.ok:
        raise BenchError(f"training the benchmark model failed at {outcome.stage}: {outcome.reason}")
    (folder / "model.onnx").write_bytes(outcome.onnx)
    row = pd.DataFrame(frame[outcome.feature_names].iloc[[0]]).to_numpy(dtype=np.float32)[0]
    return {
        "onnx": outcome.onnx,
        "path": folder / "model.onnx",
        "features": list(outcome.feature_names),
        "classes": list(outcome.class_labels),
        "row": [float(v) for v in row],
    }


def payload(model: dict) -> dict:
    """One row, FP32 typed contents: what ghz sends to every server (protobuf JSON mapping)."""
    return {
        "model_name": MODEL,
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [1, len(model["features"])],
                "contents": {"fp32_contents": model["row"]},
            }
        ],
    }


# --- contenders ---------------------------------------------------------------------------------------


def publish_desired_state(model: dict, uri: str, sha256: str, batch: int, wait_us: int) -> None:
    from mlops.bus import EventPublisher, ensure_topics
    from mlops.event_catalog import spec_for
    from mlops.events.v1 import common_pb2, deployment_pb2
    from mlops.settings import BusSettings, KafkaSettings

    state = deployment_pb2.DesiredState(
        model=MODEL,
        generation=time.time_ns(),
        versions=[
            deployment_pb2.ServingVersion(
                version=1,
                artifact_uri=uri,
                artifact_sha256=sha256,
                traffic_percent=100,
                role=common_pb2.SERVING_ROLE_PRODUCTION,
                task="classification",
                feature_names=model["features"],
                class_labels=model["classes"],
            )
        ],
        batching=deployment_pb2.BatchingConfig(max_batch_size=batch, max_wait_us=wait_us),
    )

    async def publish() -> None:
        bus = BusSettings(topic_prefix=TOPIC_PREFIX)
        await ensure_topics(
            KafkaSettings(), bus, [TOPIC_PREFIX + spec_for(deployment_pb2.DesiredState).topic]
        )
        publisher = EventPublisher(
            KafkaSettings(), BusSettings(topic_prefix=TOPIC_PREFIX), source="mlops-bench"
        )
        await publisher.start()
        try:
            await publisher.publish(state)
        finally:
            await publisher.stop()

    asyncio.run(publish())


def store_model(model: dict) -> tuple[str, str]:
    from mlops.settings import ArtifactSettings
    from mlops.store import open_store

    ref = asyncio.run(
        open_store(ArtifactSettings()).put_bytes(f"models/{MODEL}", "model.onnx", model["onnx"])
    )
    return ref.uri, ref.sha256


def bench_platform(
    name: str, model: dict, data: dict, args, log_dir: Path, *, pki: Path | None
) -> tuple[dict, dict, dict]:
    logging_on, tls, auth = PLATFORM[name]
    if tls and pki is None:
        raise BenchError(f"{name} needs the benchmark's certificates (make_pki)")
    transport = secured(pki, auth=auth) if tls else PLAINTEXT
    port, metrics, http = free_port(), free_port(), free_port()
    env = (
        server_env(transport)
        | SAMPLED_1PCT
        | {
            "MLOPS_INFERENCE_GRPC_PORT": str(port),
            "MLOPS_INFERENCE_METRICS_PORT": str(metrics),
            "MLOPS_INFERENCE_HTTP_PORT": str(http),
            "MLOPS_INFERENCE_LOG_ENABLED": "true" if logging_on else "false",
            "MLOPS_INFERENCE_SIGNATURES_FROM_REGISTRY": "false",
            # the benchmark's model is in the artifact store but not in the registry; confirmation is a
            # load-time check, off the request path measured here
            "MLOPS_INFERENCE_CONFIRM_ARTIFACTS": "false",
            "MLOPS_INFERENCE_SERVER_ID": "bench",
            "MLOPS_BUS_TOPIC_PREFIX": TOPIC_PREFIX,
        }
    )
    addr = f"127.0.0.1:{port}"
    with running(name, [sys.executable, "-m", "services.inference"], env=env, log_dir=log_dir) as proc:
        wait_until(
            name,
            lambda: model_ready(addr, transport=transport),
            deadline_s=120,
            proc=proc,
            log=log_dir / f"{name}.log",
        )
        check_answer(addr, data, model["classes"], transport)
        if auth:
            check_refused(addr, data, transport)
        if name in REST:
            check_rest_answer(infer_url(http), rest_body(data))
            figures, cpu = measure_rest(name, infer_url(http), rest_body(data), args, pid=proc.pid)
        else:
            figures, cpu = measure(name, addr, data, args, transport, pid=proc.pid)
        logged = _metric_sum(metrics, "mlops_inference_log_records_total")
        dropped = _metric_sum(metrics, "mlops_inference_log_dropped_total")
        batches = _metric_sum(metrics, "mlops_inference_batch_size_count")
        rows = _metric_sum(metrics, "mlops_inference_batch_size_sum")
    server = (
        "python -m services.inference, its REST (uvicorn + httptools, raw ASGI) beside grpc.aio"
        if name in REST
        else "python -m services.inference (grpc.aio"
    )
    detail = {
        "server": f"{server}, onnxruntime CPU, 1 intra-op thread)",
        "inference_log": "on: every request sampled, batched to Kafka" if logging_on else "off",
        "batching": f"max_batch_size {args.max_batch_size}, max_wait_us {args.max_wait_us}",
        "tracing": "1% of requests (parentbased_traceidratio 0.01)",
        "transport": (
            "TLS (ECDSA P-256 certificate by infra/local/pki.py), no client certificate asked"
            if tls
            else "plaintext"
        ),
        "authorisation": (
            "on: bearer token (a viewer's) checked against the token file on every call" if auth else "off"
        ),
        "log_records_published": logged,
        "log_records_dropped": dropped,
        "mean_rows_per_onnxruntime_call": round(rows / batches, 2) if batches else None,
    }
    return figures, cpu, detail


def _metric_sum(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def mlserver_version() -> str:
    return subprocess.run(
        [str(MLSERVER_VENV / "bin/python"), "-c", "import mlserver; print(mlserver.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def bench_mlserver(
    model: dict, data: dict, args, log_dir: Path, *, rest: bool = False
) -> tuple[dict, dict, dict]:
    """MLServer measured over gRPC (ghz), or with `rest` over its HTTP/REST (wrk)."""
    name = "mlserver-rest" if rest else "mlserver"
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    folder = Path(tempfile.mkdtemp(prefix="mlserver-bench-"))
    try:
        shutil.copy(REPO / "tests/bench/mlserver_onnx/runtime.py", folder / "runtime.py")
        (folder / "settings.json").write_text(
            json.dumps(
                {
                    "grpc_port": grpc_port,
                    "http_port": http_port,
                    "metrics_port": metrics_port,
                    "host": "127.0.0.1",
                    "parallel_workers": args.mlserver_workers,
                    "debug": False,
                }
            )
        )
        (folder / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": MODEL,
                    "implementation": "runtime.OnnxRuntime",
                    "parameters": {
                        "uri": str(model["path"]),
                        "version": "1",
                        "extra": {"class_labels": model["classes"]},
                    },
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MLOPS_"))}
        argv = [str(MLSERVER_VENV / "bin/mlserver"), "start", str(folder)]
        addr = f"127.0.0.1:{grpc_port}"
        with running(name, argv, env=env, log_dir=log_dir) as proc:
            wait_until(
                name, lambda: model_ready(addr), deadline_s=120, proc=proc, log=log_dir / f"{name}.log"
            )
            check_answer(addr, data, model["classes"])
            if rest:
                wait_until(
                    name, lambda: rest_ready(http_port), deadline_s=60, proc=proc, log=log_dir / f"{name}.log"
                )
                check_rest_answer(infer_url(http_port), rest_body(data))
                figures, cpu = measure_rest(name, infer_url(http_port), rest_body(data), args, pid=proc.pid)
            else:
                figures, cpu = measure(name, addr, data, args, pid=proc.pid)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    detail = {
        "server": f"MLServer {mlserver_version()} (PyPI), minimal onnxruntime runtime tests/bench/mlserver_onnx/runtime.py, "
        f"parallel_workers {args.mlserver_workers}, adaptive batching off (its default)"
        + (", over its REST (FastAPI + uvicorn)" if rest else ""),
    }
    return figures, cpu, detail


def floor_answer(model: dict) -> bytes:
    """What the platform's server answers to the payload, as raw outputs: probabilities and label."""
    import onnxruntime as ort

    from services.inference.codec import bytes_tensor

    session = ort.InferenceSession(model["onnx"], providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {"input": np.array([model["row"]], dtype=np.float32)})[0]
    label = model["classes"][int(probabilities.argmax())]
    reply = oip.ModelInferResponse(model_name=MODEL, model_version="1")
    reply.outputs.add(name="probabilities", datatype="FP32", shape=list(probabilities.shape))
    reply.outputs.add(name="label", datatype="BYTES", shape=[1])
    reply.raw_output_contents.append(probabilities.astype("<f4").tobytes())
    reply.raw_output_contents.append(bytes_tensor([label]))
    return reply.SerializeToString()


def bench_floor(model: dict, data: dict, args, log_dir: Path, *, threads: int) -> tuple[dict, dict, dict]:
    """A grpcio server that does no work (tests/bench/grpc_floor.py): the protocol stack's own cost."""
    name = "floor-threads" if threads else "floor-aio"
    port = free_port()
    addr = f"127.0.0.1:{port}"
    answer = log_dir / "floor-answer.bin"
    answer.write_bytes(floor_answer(model))
    argv = [sys.executable, "-m", "tests.bench.grpc_floor", "--port", str(port), "--answer", str(answer)]
    argv += ["--threads", str(threads)]
    with running(name, argv, env=dict(os.environ), log_dir=log_dir) as proc:
        wait_until(name, lambda: _answers(addr, data), deadline_s=60, proc=proc, log=log_dir / f"{name}.log")
        check_answer(addr, data, model["classes"])
        figures, cpu = measure(name, addr, data, args, pid=proc.pid)
    server = f"grpc.server, {threads} handler threads" if threads else "grpc.aio (as the platform's server)"
    detail = {
        "server": f"tests/bench/grpc_floor.py: {server}, no work: parses the request, returns fixed answer bytes"
    }
    return figures, cpu, detail


def _answers(addr: str, data: dict) -> bool:
    try:
        check_answer(addr, data, [])
        return True
    except grpc.RpcError:
        return False


def bench_onnxruntime(model: dict, args) -> tuple[dict, dict, dict]:
    """onnxruntime in a Python loop, one row per call: what no server can beat (no network, no protocol)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model["onnx"], options, providers=["CPUExecutionProvider"])
    row = np.array([model["row"]], dtype=np.float32)
    for _ in range(200):
        session.run(None, {"input": row})
    latencies = []
    end = time.perf_counter() + args.duration
    started = time.perf_counter()
    while (now := time.perf_counter()) < end:
        session.run(None, {"input": row})
        latencies.append(time.perf_counter() - now)
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    result = Figures(
        requests=len(latencies),
        errors=0,
        rps=len(latencies) / elapsed,
        p50_ms=ordered[len(ordered) // 2] * 1000,
        p99_ms=ordered[int(len(ordered) * 0.99)] * 1000,
    )
    print(
        f"  {'onnxruntime':15s} loop  {result.rps:9.0f} calls/s  p50 {result.p50_ms:7.3f} ms  p99 {result.p99_ms:7.3f} ms"
    )
    return (
        {1: result},
        {},
        {"server": "none: session.run in a Python loop, one row per call, 1 intra-op thread"},
    )
