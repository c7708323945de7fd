"""docker-compose.gpu.yml, offline: valid against the Compose specification alone and merged onto
docker-compose.yml as Compose merges files; inference, evaluator and trainer, and only they, reserve
one NVIDIA GPU, run the CUDA image and set the settings that choose CUDA, which their settings classes
accept; the loader's path names where the image's virtual environment keeps the CUDA libraries."""

from __future__ import annotations

import copy
import json
import re

import jsonschema
import pytest
import yaml

from services.evaluator.settings import EvaluatorSettings
from services.inference.settings import InferenceSettings
from services.trainer.settings import TrainerSettings
from tests.unit.deploy_compose_helpers import compose, use_env
from tests.unit.test_deploy_tools import REPO, cached

GPU_COMPOSE = REPO / "docker-compose.gpu.yml"
GPU_SERVICES = {
    "inference": (InferenceSettings, "execution_provider"),
    "evaluator": (EvaluatorSettings, "execution_provider"),
    "trainer": (TrainerSettings, "device"),
}
RESERVATION = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


def gpu_overlay() -> dict:
    return yaml.safe_load(GPU_COMPOSE.read_text())


def merge(base: object, override: object) -> object:
    """Compose's merge of a later file onto an earlier one, for what the overlay holds: mappings merge
    key by key, a scalar or a sequence replaces; `build: .` is its short form of `{context: .}`."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            earlier = merged.get(key)
            if key == "build" and isinstance(earlier, str):
                earlier = {"context": earlier}
            merged[key] = merge(earlier, value) if key in merged else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def merged() -> dict:
    return merge(compose(), {"services": gpu_overlay()["services"]})


def schema() -> dict:
    return json.loads(cached("compose-spec.json").read_text())


def test_overlay_and_merged_file_are_valid_against_the_compose_specification() -> None:
    jsonschema.Draft7Validator(schema()).validate(gpu_overlay())
    jsonschema.Draft7Validator(schema()).validate(merged())


def test_the_schema_check_catches_a_broken_reservation() -> None:
    broken = gpu_overlay()
    (device,) = broken["services"]["inference"]["deploy"]["resources"]["reservations"]["devices"]
    del device["capabilities"]  # Compose needs them to pick a device
    device["gpus"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema()).validate(broken)


def test_inference_evaluator_and_trainer_reserve_one_nvidia_gpu_and_no_other_service_does() -> None:
    overlay = gpu_overlay()["services"]
    assert set(overlay) == set(GPU_SERVICES)
    base = compose()["services"]
    services = merged()["services"]
    for name, spec in services.items():
        devices = spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        if name in GPU_SERVICES:
            assert devices == [RESERVATION], name
            # what the overlay does not touch is the base file's: command, probe, mounts, dependencies
            for key in ("command", "healthcheck", "volumes", "depends_on", "restart"):
                assert spec.get(key) == base[name].get(key), (name, key)
            assert spec["environment"].items() >= base[name]["environment"].items(), name
        else:
            assert devices is None and spec == base[name], name


def test_gpu_services_run_the_cuda_image_built_from_the_same_dockerfile() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    # an empty TORCH_INDEX_URL installs torch from the default index, the CUDA build
    assert re.search(r"^ARG TORCH_INDEX_URL=\S+", dockerfile, re.M)
    assert 'if [ -n "$TORCH_INDEX_URL" ]' in dockerfile
    for name in GPU_SERVICES:
        spec = merged()["services"][name]
        assert spec["build"] == {"context": ".", "args": {"TORCH_INDEX_URL": ""}}, name
        assert spec["image"] == "${MLOPS_GPU_IMAGE:-mlops:cuda}", name
        assert spec["image"] != compose()["services"][name]["image"], "not the CPU image's tag"


@pytest.mark.parametrize("name", sorted(GPU_SERVICES))
def test_each_gpu_service_is_told_to_use_cuda_through_its_real_settings(name: str, monkeypatch) -> None:
    settings_class, field = GPU_SERVICES[name]
    environment = gpu_overlay()["services"][name]["environment"]
    variable = f"MLOPS_{name.upper()}_{field.upper()}"
    assert environment[variable] == "cuda"
    use_env(monkeypatch, {k: v for k, v in environment.items() if k.startswith("MLOPS_")})
    assert getattr(settings_class(), field) == "cuda"
    # and a value the setting refuses would be caught
    monkeypatch.setenv(variable, "gpu")
    with pytest.raises(ValueError, match=field):
        settings_class()


def test_the_loader_path_is_the_images_virtual_environment() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    python = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)", dockerfile, re.M)
    venv = re.search(r"^RUN python -m venv (\S+)", dockerfile, re.M)
    assert python and venv, "the Dockerfile no longer names its Python image or its virtual environment"
    site = f"{venv[1]}/lib/python{python[1]}/site-packages/nvidia"
    for name in GPU_SERVICES:
        folders = gpu_overlay()["services"][name]["environment"]["LD_LIBRARY_PATH"].split(":")
        assert folders == [f"{site}/cu13/lib", f"{site}/cudnn/lib"], name
