"""R2: each service SIGKILLed in the middle of its work; the work finishes after the restart, once.

The services run under the local stack's supervisor, which restarts a killed one as Kubernetes
would. One turn of the loop kills, in order: the registry while it checks the committed data, the
trainer while it trains, the evaluator once the version is registered, the deployer once the
evaluation is recorded. Then the inference server is killed under load, and the monitor while it
counts that load."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from mlops.grpc import open_sync_channel
from tests.fault.conftest import (
    all_services_running,
    figures,
    kill_service,
    wait_restarted,
    wait_until,
)
from tests.fault.loop import Loop

WINE_FEATURES = 13


class Caller(threading.Thread):
    """Calls a model over the Open Inference Protocol as fast as one client can, counting outcomes."""

    def __init__(self, model: str) -> None:
        super().__init__(daemon=True)
        self.model = model
        self.ok = 0
        self.failed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        row = np.random.default_rng(0).normal(size=(1, WINE_FEATURES)).astype(np.float32)
        request = oip.ModelInferRequest(model_name=self.model)
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, WINE_FEATURES])
        tensor.contents.fp32_contents.extend(row.ravel().tolist())
        with open_sync_channel("127.0.0.1:8001") as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            while not self.stopping.is_set():
                try:
                    stub.ModelInfer(request, timeout=2)
                    self.ok += 1
                except grpc.RpcError:
                    self.failed += 1
                    time.sleep(0.05)  # do not spin while the server is down

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


@pytest.mark.timeout(900)
def test_r2_every_service_killed_mid_work_finishes_it_once(unique, tmp_path):
    restarts = all_services_running()
    loop = Loop(f"r2-{unique}", tmp_path, epochs=1500)
    killed: dict[str, float] = {}

    def kill_and_wait(name: str) -> None:
        down = time.monotonic()
        pid = kill_service(name)
        wait_restarted(name, pid)
        killed[name] = round(time.monotonic() - down, 1)

    try:
        loop.declare()
        loop.commit()
        kill_and_wait("registry")  # the commit's check is under way or queued
        wait_until(lambda: loop.made().runs >= 1, timeout_s=240, what="training started")
        kill_and_wait("trainer")
        wait_until(lambda: loop.made().versions, timeout_s=400, what="version registered")
        kill_and_wait("evaluator")
        wait_until(lambda: loop.made().evaluations, timeout_s=240, what="evaluation recorded")
        kill_and_wait("deployer")
        made = loop.wait_in_production(1, timeout_s=300)
        assert not made.duplicates(), made.duplicates()
        assert made.versions == [1] and made.production == 1 and len(made.evaluations) == 1

        caller = Caller(loop.name)
        caller.start()
        try:
            wait_until(lambda: caller.ok >= 200, timeout_s=60, what="answers before the kills")
            kill_and_wait("monitor")
            before = caller.ok
            kill_and_wait("inference")
            wait_until(lambda: caller.ok >= before + 200, timeout_s=120, what="answers after the restart")
        finally:
            caller.stop()
        again = loop.made()
    finally:
        loop.close()
    figures(
        "R2 services killed mid-work",
        down_to_serving_s=killed,
        versions=again.versions,
        runs=again.runs,
        evaluations=len(again.evaluations),
        rollouts=len(again.rollouts),
        answers=caller.ok,
        failed_while_inference_down=caller.failed,
    )
    assert not again.duplicates(), again.duplicates()
    assert again.production == 1
    after = all_services_running()
    assert {name: after[name] - restarts[name] for name in after} == {name: 1 for name in after}, after
