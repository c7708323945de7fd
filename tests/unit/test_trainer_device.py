"""Where the trainer trains: `MLOPS_TRAINER_DEVICE` (`auto`, `cpu`, `cuda`) resolved against what torch
sees, and the hardware it reports with each run. torch's CUDA probes are replaced, so that both answers
are shown on any machine."""

from __future__ import annotations

import pytest
import torch

from services.trainer.training import describe_hardware, resolve_device


@pytest.fixture
def gpu(monkeypatch) -> None:
    """torch sees one GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100 80GB HBM3")


@pytest.fixture
def no_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_trains_on_cuda_where_torch_sees_a_gpu(gpu) -> None:
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cpu") == "cpu", "cpu is forced even where a GPU is"


def test_auto_trains_on_the_cpu_where_torch_sees_none(no_gpu) -> None:
    assert resolve_device("auto") == "cpu"
    # forced: the run then fails on its first tensor, rather than quietly training on the CPU
    assert resolve_device("cuda") == "cuda"


def test_hardware_names_the_gpu_a_run_trains_on(gpu) -> None:
    hardware = describe_hardware("auto")
    assert (hardware["device"], hardware["accelerator"], hardware["accelerator_count"]) == (
        "cuda",
        "NVIDIA H100 80GB HBM3",
        1,
    )
    cpu = describe_hardware("cpu")
    assert (cpu["device"], cpu["accelerator"], cpu["accelerator_count"]) == ("cpu", "", 0)
