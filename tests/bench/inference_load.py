"""The inference benchmark's transport and load: plaintext or TLS (with a bearer token) to a contender,
ghz's runs over it, the checks every server must pass before it is measured, and the CPU per request.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc
from tests.bench.harness import CACHE, PROTO_ROOT, REPO, BenchError, Figures, ghz_figures, ghz_load

GHZ = CACHE / "bin" / "ghz"
PROTO = "inference/grpc_service.proto"
METHOD = "inference.GRPCInferenceService.ModelInfer"
MODEL = "bench-wine"


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
