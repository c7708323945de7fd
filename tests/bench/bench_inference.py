"""Model serving: the platform's inference server against MLServer, same model, same client, same load.

One ONNX model, trained by the trainer's own code on scikit-learn's wine data (13 features,
64→32 hidden units, 3 classes, as the demo's spec), served by:

- the platform's inference server (`python -m services.inference`), with the inference log on
  (every request sampled and published to Kafka) and with it off; the model named by a
  DesiredState record on the benchmark's own topics, dynamic batching on (64 rows, no added wait);
- the same server with the log off, secured as the local stack secures it: TLS with a certificate
  from infra/local/pki.py (made by the benchmark in a temporary directory) and bearer-token
  authorisation (`platform-tls`), and with TLS alone (`platform-tls-noauth`), so that the cost of
  security is read against `platform-nolog` in the same run and split into transport and check;
- MLServer (PyPI `mlserver`, in its own virtualenv) with a minimal onnxruntime runtime
  (`tests/bench/mlserver_onnx/runtime.py`) answering the same outputs;
- two floors, `tests/bench/grpc_floor.py`: grpcio servers that parse the request and return fixed
  answer bytes with no other work, one on `grpc.aio` (the platform server's framework), one on the
  synchronous server with handler threads: what no grpcio server can beat on this machine;
- and, as a ceiling, onnxruntime called in a Python loop in this process (no server, no network).

ghz drives `inference.GRPCInferenceService/ModelInfer` (both servers speak the same KServe V2
gRPC, so the proto and the payload are the same: one row, FP32 typed contents) closed-loop at
each concurrency for the same duration after a warm-up. Each server is started by this script,
measured, and stopped before the next, so no two servers share the cores. Tracing of the
platform's server samples 1% of requests (`parentbased_traceidratio`), its default for a busy path
in production; MLServer exports no traces.

    python -m tests.bench.bench_inference [--concurrency 1 16 64] [--duration 10] [--warmup 3] [--rounds 3]
                                          [--only platform-log platform-nolog platform-tls platform-tls-noauth
                                                  mlserver floor-aio floor-threads onnxruntime]

Figures go to bench-results/inference.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pandas as pd

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc
from tests.bench.bench_registry import (
    BenchError,
    Figures,
    free_port,
    ghz_figures,
    ghz_load,
    running,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MLOPS_CACHE", Path.home() / ".cache" / "mlops"))
MLSERVER_VENV = CACHE / "mlserver-venv"
GHZ = CACHE / "bin" / "ghz"
PROTO_ROOT = REPO / "protos"
PROTO = "inference/grpc_service.proto"
METHOD = "inference.GRPCInferenceService.ModelInfer"
MODEL = "bench-wine"
TOPIC_PREFIX = "bench.inference."
RESULTS = REPO / "bench-results" / "inference.json"
SAMPLED_1PCT = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
CONTENDERS = (
    "platform-log",
    "platform-nolog",
    "platform-tls",
    "platform-tls-noauth",
    "mlserver",
    "floor-aio",
    "floor-threads",
    "onnxruntime",
)
PLATFORM = {
    # name: (inference log on, TLS, authorisation)
    "platform-log": (True, False, False),
    "platform-nolog": (False, False, False),
    "platform-tls": (False, True, True),
    "platform-tls-noauth": (False, True, False),
}
PLAINTEXT_BASE = "platform-nolog"
"""What the secured contenders are compared with: the same server and settings over plaintext."""
SECURITY_TARGET = 0.15
"""Most of the plaintext throughput that TLS and authorisation may cost at the highest concurrency."""
FLOOR_THREADS = 2
"""Handler threads of the synchronous floor: the best of 1, 2, 4, 8 and 16 on 2 cores."""


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


# --- security -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transport:
    """How a contender's server is reached: plaintext (the default), or TLS with the benchmark's CA and,
    where the server checks calls, a bearer token that the clients send."""

    ca: Path | None = None
    """PEM CA that signed the server's certificate; None: plaintext."""
    token: str | None = field(default=None, repr=False)
    metadata_file: Path | None = None
    """The token as ghz's call metadata (`authorization: Bearer …`), a 0600 file: never on ghz's argv."""
    server_env: dict[str, str] = field(default_factory=dict, repr=False)
    """The server's MLOPS_GRPC_* security variables; empty: plaintext, no checks."""


PLAINTEXT = Transport()


def make_pki(folder: Path) -> Path:
    """The local stack's kind of PKI (infra/local/pki.py) in `folder`: a CA, the inference server's
    certificate, people's bearer tokens and the servers' digest file. The benchmark's own, so that it
    depends on no file of a running stack."""
    subprocess.run(
        [sys.executable, str(REPO / "infra/local/pki.py"), str(folder / "pki")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return folder


def secured(pki: Path, *, auth: bool) -> Transport:
    """TLS with the inference server's certificate, as infra/local/services.sh sets it (no client CA:
    OIP clients carry bearer tokens), and with `auth` the token check with a viewer's token (the least
    role that may call ModelInfer)."""
    server_env = {
        "MLOPS_GRPC_TLS_CERT": str(pki / "pki/grpc/inference.pem"),
        "MLOPS_GRPC_TLS_KEY": str(pki / "pki/grpc/inference.key"),
    }
    if not auth:
        return Transport(ca=pki / "clients/ca.pem", server_env=server_env)
    server_env |= {"MLOPS_GRPC_AUTH": "true", "MLOPS_GRPC_TOKEN_FILE": str(pki / "pki/grpc/tokens")}
    token = (pki / "clients/viewer.token").read_text().strip()
    metadata = pki / "clients/ghz-metadata.json"
    fd = os.open(metadata, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"authorization": f"Bearer {token}"}, out)
    return Transport(ca=pki / "clients/ca.pem", token=token, metadata_file=metadata, server_env=server_env)


def server_env(transport: Transport) -> dict[str, str]:
    """This process's environment without any gRPC server security (the stack's env or a test's may set
    it), plus the contender's own: every contender states its security rather than inheriting one.
    MLOPS_GRPC_CLIENT_* stay: they are how the server would call its peers."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MLOPS_GRPC_") or k.startswith("MLOPS_GRPC_CLIENT_")
    }
    return env | transport.server_env


def channel(addr: str, transport: Transport) -> grpc.Channel:
    """A channel secured as ghz's calls are: the benchmark's clients check what ghz measures."""
    if transport.ca is None:
        return grpc.insecure_channel(addr)
    credentials = grpc.ssl_channel_credentials(root_certificates=transport.ca.read_bytes())
    if transport.token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(transport.token)
        )
    return grpc.secure_channel(addr, credentials)


# --- load ---------------------------------------------------------------------------------------------


def run_ghz(
    addr: str, data: dict, concurrency: int, duration_s: float, transport: Transport = PLAINTEXT
) -> Figures:
    if transport.ca is None:
        return ghz_load(
            str(GHZ),
            addr,
            proto=PROTO,
            method=METHOD,
            data=data,
            concurrency=concurrency,
            duration_s=duration_s,
        )
    return ghz_secure_load(addr, data, concurrency, duration_s, transport)


def ghz_secure_load(
    addr: str, data: dict, concurrency: int, duration_s: float, transport: Transport
) -> Figures:
    """ghz_load's run (the same flags, load and tally) over TLS, the server verified against the
    benchmark's CA, and the token read from a metadata file."""
    argv = [str(GHZ), "--cacert", str(transport.ca)]
    if transport.metadata_file is not None:
        argv += ["--metadata-file", str(transport.metadata_file)]
    argv += [
        "--import-paths",
        str(PROTO_ROOT),
        "--proto",
        str(PROTO_ROOT / PROTO),
        "--call",
        METHOD,
        "--data",
        json.dumps(data),
        "--concurrency",
        str(concurrency),
        "--connections",
        "1",
        "--duration",
        f"{duration_s:g}s",
        "--duration-stop",
        "ignore",
        "--timeout",
        "10s",
        "--format",
        "json",
        addr,
    ]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"ghz over TLS exited with {out.returncode}: {out.stderr[-2000:]}")
    return ghz_figures(out.stdout)


def model_ready(addr: str, name: str = MODEL, transport: Transport = PLAINTEXT) -> bool:
    with channel(addr, transport) as chan:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(chan)
        try:
            return stub.ModelReady(oip.ModelReadyRequest(name=name), timeout=2).ready
        except grpc.RpcError:
            return False


def check_answer(addr: str, data: dict, classes: list[str], transport: Transport = PLAINTEXT) -> None:
    """Every server must give a real answer to the payload before it is measured."""
    request = oip.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=data["inputs"][0]["shape"])
    tensor.contents.fp32_contents.extend(data["inputs"][0]["contents"]["fp32_contents"])
    with channel(addr, transport) as chan:
        reply = grpc_service_pb2_grpc.GRPCInferenceServiceStub(chan).ModelInfer(request, timeout=10)
    names = [o.name for o in reply.outputs]
    if "probabilities" not in names or "label" not in names:
        raise BenchError(f"{addr} answered outputs {names}")


def check_refused(addr: str, data: dict, transport: Transport) -> None:
    """A server that checks calls must refuse one without a token: else the measurement is not of the check."""
    try:
        check_answer(addr, data, [], Transport(ca=transport.ca))
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return
        raise
    raise BenchError(f"{addr} answered a call without a token: authorisation is not on")


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) the process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's children that have ended: each ghz run once it has returned."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    name: str,
    addr: str,
    data: dict,
    args: argparse.Namespace,
    transport: Transport = PLAINTEXT,
    *,
    pid: int,
) -> tuple[dict[int, Figures], dict[int, dict[str, float]]]:
    """ghz's figures at each concurrency, and the CPU per request of the server process (`pid`) and of
    ghz: throughput on cores shared with other work swings with that work, CPU per request much less."""
    run_ghz(addr, data, max(args.concurrency), args.warmup, transport)  # warm-up, thrown away
    figures, cpu = {}, {}
    for concurrency in args.concurrency:
        load = os.getloadavg()[0]
        server_before, ghz_before = process_cpu_s(pid), children_cpu_s()
        result = run_ghz(addr, data, concurrency, args.duration, transport)
        server_s, ghz_s = process_cpu_s(pid) - server_before, children_cpu_s() - ghz_before
        figures[concurrency] = result
        requests = max(result.requests, 1)
        cpu[concurrency] = {
            "server_us_per_request": round(server_s / requests * 1e6, 1),
            "ghz_us_per_request": round(ghz_s / requests * 1e6, 1),
        }
        print(
            f"  {name:19s} c={concurrency:<3d} {result.rps:9.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
            f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}  "
            f"server {cpu[concurrency]['server_us_per_request']:5.0f} µs/req  "
            f"ghz {cpu[concurrency]['ghz_us_per_request']:5.0f} µs/req  (load {load:.2f})",
            flush=True,
        )
    return figures, cpu


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
    port, metrics = free_port(), free_port()
    env = (
        server_env(transport)
        | SAMPLED_1PCT
        | {
            "MLOPS_INFERENCE_GRPC_PORT": str(port),
            "MLOPS_INFERENCE_METRICS_PORT": str(metrics),
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
        figures, cpu = measure(name, addr, data, args, transport, pid=proc.pid)
        logged = _metric_sum(metrics, "mlops_inference_log_records_total")
        dropped = _metric_sum(metrics, "mlops_inference_log_dropped_total")
        batches = _metric_sum(metrics, "mlops_inference_batch_size_count")
        rows = _metric_sum(metrics, "mlops_inference_batch_size_sum")
    detail = {
        "server": "python -m services.inference (grpc.aio, onnxruntime CPU, 1 intra-op thread)",
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


def bench_mlserver(model: dict, data: dict, args, log_dir: Path) -> tuple[dict, dict, dict]:
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
        with running("mlserver", argv, env=env, log_dir=log_dir) as proc:
            wait_until(
                "mlserver", lambda: model_ready(addr), deadline_s=120, proc=proc, log=log_dir / "mlserver.log"
            )
            check_answer(addr, data, model["classes"])
            figures, cpu = measure("mlserver", addr, data, args, pid=proc.pid)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    detail = {
        "server": f"MLServer {mlserver_version()} (PyPI), minimal onnxruntime runtime tests/bench/mlserver_onnx/runtime.py, "
        f"parallel_workers {args.mlserver_workers}, adaptive batching off (its default)",
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


# --- summary ------------------------------------------------------------------------------------------


def median_figures(rounds: list[Figures]) -> Figures:
    return Figures(
        requests=int(statistics.median(r.requests for r in rounds)),
        errors=max(r.errors for r in rounds),
        rps=statistics.median(r.rps for r in rounds),
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
    )


def security_ratios(results: dict[str, list[dict[int, Figures]]], medians: dict, cpu: dict) -> dict:
    """Each secured contender against the plaintext one (the same server and settings): medians' ratios,
    each round's ratio against the plaintext run of the same round (the spread), and CPU per request."""
    if PLAINTEXT_BASE not in medians:
        return {}
    base, base_rounds = medians[PLAINTEXT_BASE], results[PLAINTEXT_BASE]
    out: dict = {}
    for name in ("platform-tls", "platform-tls-noauth"):
        if name not in medians:
            continue
        by_round = {
            c: [r[c].rps / b[c].rps for r, b in zip(results[name], base_rounds, strict=False)]
            for c in medians[name]
        }
        out[name] = {
            str(c): {
                "throughput_x_plaintext": round(f.rps / base[c].rps, 3),
                "throughput_cost": round(1 - f.rps / base[c].rps, 3),
                "p99_x_plaintext": round(f.p99_ms / base[c].p99_ms, 3),
                "p50_x_plaintext": round(f.p50_ms / base[c].p50_ms, 3),
                # each round against the plaintext run of the same round: drifting load cancels out
                "throughput_x_plaintext_by_round": [round(x, 3) for x in by_round[c]],
                "throughput_x_plaintext_median_of_rounds": round(statistics.median(by_round[c]), 3),
                "server_cpu_x_plaintext": _cpu_ratio(cpu, name, c, "server_us_per_request"),
                "ghz_cpu_x_plaintext": _cpu_ratio(cpu, name, c, "ghz_us_per_request"),
            }
            for c, f in medians[name].items()
            if c in base
        }
    if "platform-tls" in out:
        top = str(max(medians["platform-tls"]))
        cost = out["platform-tls"][top]["throughput_cost"]
        paired = round(1 - out["platform-tls"][top]["throughput_x_plaintext_median_of_rounds"], 3)
        out["target"] = {
            "concurrency": int(top),
            "max_throughput_cost": SECURITY_TARGET,
            "measured_throughput_cost": cost,
            "measured_throughput_cost_median_of_rounds": paired,
            "server_cpu_x_plaintext": out["platform-tls"][top]["server_cpu_x_plaintext"],
            "met": cost <= SECURITY_TARGET,
        }
    return out


def median_cpu(rounds: list[dict[int, dict[str, float]]]) -> dict[int, dict[str, float]]:
    return {
        c: {key: round(statistics.median(r[c][key] for r in rounds), 1) for key in rounds[0][c]}
        for c in rounds[0]
    }


def _cpu_ratio(cpu: dict, name: str, concurrency: int, key: str) -> float | None:
    try:
        return round(cpu[name][concurrency][key] / cpu[PLAINTEXT_BASE][concurrency][key], 3)
    except (KeyError, ZeroDivisionError):
        return None


def summarise(
    results: dict[str, list[dict[int, Figures]]],
    cpu_rounds: dict[str, list],
    details: dict,
    args,
    model: dict,
) -> dict:
    medians = {
        name: {c: median_figures([r[c] for r in rounds]) for c in rounds[0]}
        for name, rounds in results.items()
    }
    cpu = {name: median_cpu(rounds) for name, rounds in cpu_rounds.items() if rounds[0]}
    ratios: dict = {}
    if "mlserver" in medians:
        for name in ("platform-log", "platform-nolog", "floor-aio", "floor-threads"):
            if name not in medians:
                continue
            ratios[name] = {
                str(c): {
                    "throughput_x_mlserver": round(f.rps / medians["mlserver"][c].rps, 2),
                    "p99_fraction_of_mlserver": round(f.p99_ms / medians["mlserver"][c].p99_ms, 2),
                }
                for c, f in medians[name].items()
                if c in medians["mlserver"]
            }
    if "platform-log" in medians and "platform-nolog" in medians:
        ratios["logging_cost_p99"] = {
            str(c): round(medians["platform-log"][c].p99_ms / medians["platform-nolog"][c].p99_ms - 1, 3)
            for c in medians["platform-log"]
        }
    security = security_ratios(results, medians, cpu)
    if security:
        ratios["security_vs_plaintext"] = security
    return {
        "benchmark": "inference",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "method": {
            "model": f"wine MLP 13 -> 64 -> 32 -> 3 by the trainer's code ({len(model['onnx'])} bytes ONNX)",
            "request": "ModelInfer, 1 row, FP32 typed contents, same JSON payload for every server",
            "load_generator": "ghz, 1 connection, closed loop; over TLS with --cacert and the token "
            "from a 0600 --metadata-file (one handshake per run, on the connection)",
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
        },
        "contenders": details,
        "results": {name: {str(c): asdict(f) for c, f in per.items()} for name, per in medians.items()},
        "cpu_us_per_request": {name: {str(c): v for c, v in per.items()} for name, per in cpu.items()},
        "ratios": ratios,
    }


def print_table(summary: dict) -> None:
    results = summary["results"]
    print(
        "\n| contender | concurrency | req/s | p50 ms | p99 ms | × MLServer req/s | p99 ÷ MLServer "
        "| × plaintext req/s | p99 ÷ plaintext | server CPU µs/req | ghz CPU µs/req |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = results.get("mlserver", {})
    plain = results.get(PLAINTEXT_BASE, {})
    for name, per in results.items():
        for c, f in per.items():
            cpu = summary["cpu_us_per_request"].get(name, {}).get(c)
            sc = f"{cpu['server_us_per_request']:.0f}" if cpu else ""
            gc = f"{cpu['ghz_us_per_request']:.0f}" if cpu else ""
            ref = base.get(c)
            x = f"{f['rps'] / ref['rps']:.2f}" if ref else ""
            p = f"{f['p99_ms'] / ref['p99_ms']:.2f}" if ref else ""
            own = plain.get(c) if name in PLATFORM else None
            xp = f"{f['rps'] / own['rps']:.2f}" if own else ""
            pp = f"{f['p99_ms'] / own['p99_ms']:.2f}" if own else ""
            print(
                f"| {name} | {c} | {f['rps']:,.0f} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {x} | {p} "
                f"| {xp} | {pp} | {sc} | {gc} |"
            )
    target = summary["ratios"].get("security_vs_plaintext", {}).get("target")
    if target:
        print(
            f"\nTLS + authorisation at {target['concurrency']} callers: {target['measured_throughput_cost']:.1%} "
            f"of the plaintext throughput (target: at most {target['max_throughput_cost']:.0%}; "
            f"{'met' if target['met'] else 'not met'}); round by round "
            f"{target['measured_throughput_cost_median_of_rounds']:.1%} (median); "
            f"server CPU per request × {target['server_cpu_x_plaintext']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mlserver-workers", type=int, default=0)
    parser.add_argument("--max-batch-size", type=int, default=64, help="the platform's dynamic batching")
    parser.add_argument("--max-wait-us", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--skip-setup", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_setup:
        subprocess.run(["bash", str(REPO / "tests/bench/setup.sh")], check=True)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    with tempfile.TemporaryDirectory() as folder:
        model = train_model(Path(folder))
        data = payload(model)
        uri, sha256 = store_model(model)
        if set(PLATFORM) & set(args.only):
            publish_desired_state(model, uri, sha256, args.max_batch_size, args.max_wait_us)
        pki = make_pki(Path(folder)) if any(PLATFORM[n][1] for n in args.only if n in PLATFORM) else None
        results: dict[str, list] = {}
        cpu_rounds: dict[str, list] = {}
        details: dict = {}
        for round_index in range(args.rounds):
            order = [c for c in CONTENDERS if c in args.only]
            if round_index % 2:
                order.reverse()
            print(f"round {round_index + 1}/{args.rounds}: {', '.join(order)}", flush=True)
            for name in order:
                if name == "onnxruntime":
                    figures, cpu, detail = bench_onnxruntime(model, args)
                elif name == "mlserver":
                    figures, cpu, detail = bench_mlserver(model, data, args, log_dir)
                elif name.startswith("floor"):
                    threads = FLOOR_THREADS if name == "floor-threads" else 0
                    figures, cpu, detail = bench_floor(model, data, args, log_dir, threads=threads)
                else:
                    figures, cpu, detail = bench_platform(name, model, data, args, log_dir, pki=pki)
                results.setdefault(name, []).append(figures)
                cpu_rounds.setdefault(name, []).append(cpu)
                details[name] = detail
        summary = summarise(results, cpu_rounds, details, args, model)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary)
    print(f"\nratios: {json.dumps(summary['ratios'])}\nresults in {RESULTS}; server logs in {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
