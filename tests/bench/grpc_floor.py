"""The floor of a Python gRPC server on this machine: `ModelInfer` answered with no work at all.

It parses nothing beyond what gRPC does, runs no model and returns the same answer bytes for every
request (what the platform's server answers to the benchmark's payload, captured once at start).
No Python server built on grpcio can answer faster under the same client and load, so it tells
how much of a server's time is the protocol stack and how much is its own work.

    python -m tests.bench.grpc_floor --port P --answer FILE [--threads N]

`--threads 0` (default) serves with `grpc.aio`, as the platform's server does; `--threads N` with
the synchronous server and N handler threads.
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from inference import grpc_service_pb2 as oip

METHOD = "ModelInfer"
SERVICE = "inference.GRPCInferenceService"


def handler(answer: bytes, asynchronous: bool) -> grpc.GenericRpcHandler:
    def sync_infer(request: bytes, context) -> bytes:
        return answer

    async def async_infer(request: bytes, context) -> bytes:
        return answer

    method = grpc.unary_unary_rpc_method_handler(
        async_infer if asynchronous else sync_infer,
        request_deserializer=oip.ModelInferRequest.FromString,  # parse, as every real server must
        response_serializer=None,
    )
    return grpc.method_handlers_generic_handler(SERVICE, {METHOD: method})


async def serve_async(port: int, answer: bytes) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(answer, asynchronous=True),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"floor (grpc.aio) on {port}", flush=True)
    await server.wait_for_termination()


def serve_threads(port: int, answer: bytes, threads: int) -> None:
    server = grpc.server(ThreadPoolExecutor(threads))
    server.add_generic_rpc_handlers((handler(answer, asynchronous=False),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"floor (grpc, {threads} threads) on {port}", flush=True)
    server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answer", type=Path, required=True, help="a serialized ModelInferResponse")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    answer = args.answer.read_bytes()
    oip.ModelInferResponse.FromString(answer)  # refuse to serve anything but an answer
    if args.threads:
        serve_threads(args.port, answer, args.threads)
    else:
        asyncio.run(serve_async(args.port, answer))


if __name__ == "__main__":
    main()
