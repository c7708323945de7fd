"""infra/k8s/overlays/gpu (production with components/gpu), offline: it builds and validates against the
Kubernetes schemas; inference, evaluator and trainer, and only they, take one `nvidia.com/gpu`, go to
GPU nodes, tolerate their taint and are told to use CUDA through their real settings; everything else
is production's, but for the CUDA image's tag and the larger memory limits."""

from __future__ import annotations

import copy
import functools

import pytest
import yaml

from services.evaluator.settings import EvaluatorSettings
from services.inference.settings import InferenceSettings
from services.trainer.settings import TrainerSettings
from tests.unit.deploy_compose_helpers import use_env
from tests.unit.deploy_k8s_helpers import build, kubeconform
from tests.unit.deploy_k8s_helpers import objects as rendered
from tests.unit.test_deploy_tools import REPO, SERVICES

GPU_SERVICES = {
    "inference": (InferenceSettings, "execution_provider"),
    "evaluator": (EvaluatorSettings, "execution_provider"),
    "trainer": (TrainerSettings, "device"),
}
GPU = "nvidia.com/gpu"
NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}
CUDA_SETTINGS = {"LD_LIBRARY_PATH"} | {f"MLOPS_{n.upper()}_{f.upper()}" for n, (_, f) in GPU_SERVICES.items()}


@functools.cache
def _rendered(overlay: str) -> str:
    return yaml.safe_dump_all(rendered(overlay))


def objects(overlay: str) -> list[dict]:
    """The overlay's objects, rendered once per module (kustomize takes seconds), a fresh copy each time."""
    return list(yaml.safe_load_all(_rendered(overlay)))


def deployments(overlay: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in objects(overlay) if d["kind"] == "Deployment"}


def container(deployment: dict) -> dict:
    (one,) = deployment["spec"]["template"]["spec"]["containers"]
    return one


def env(deployment: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container(deployment)["env"]}


def test_gpu_overlay_validates_against_the_kubernetes_schemas(tmp_path) -> None:
    path = tmp_path / "gpu.yaml"
    path.write_text(build("gpu"))
    result = kubeconform(path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert "Invalid: 0, Errors: 0" in summary, summary
    assert int(summary.split("Valid: ")[1].split(",")[0]) >= 3 * len(SERVICES) + 2, summary


def test_inference_evaluator_and_trainer_take_one_gpu_on_gpu_nodes_and_no_other_service_does() -> None:
    found = deployments("gpu")
    for name in SERVICES:
        deployment = found[f"mlops-{name}"]
        pod = deployment["spec"]["template"]["spec"]
        resources = container(deployment)["resources"]
        if name in GPU_SERVICES:
            assert resources["limits"][GPU] == 1, name
            assert GPU not in resources["requests"], "an extended resource's request is its limit"
            assert pod["nodeSelector"] == NODE_SELECTOR, name
            assert pod["tolerations"] == [TOLERATION], name
        else:
            assert GPU not in resources["limits"] and "nodeSelector" not in pod, name
            assert "tolerations" not in pod and "LD_LIBRARY_PATH" not in env(deployment), name


@pytest.mark.parametrize("name", sorted(GPU_SERVICES))
def test_each_gpu_service_is_told_to_use_cuda_through_its_real_settings(name: str, monkeypatch) -> None:
    settings_class, field = GPU_SERVICES[name]
    values = env(deployments("gpu")[f"mlops-{name}"])
    variable = f"MLOPS_{name.upper()}_{field.upper()}"
    assert values[variable] == "cuda"
    use_env(monkeypatch, {variable: "cuda"})
    assert getattr(settings_class(), field) == "cuda"


def test_the_cuda_libraries_are_where_the_compose_overlay_finds_them() -> None:
    compose_gpu = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text())["services"]
    for name in GPU_SERVICES:
        path = env(deployments("gpu")[f"mlops-{name}"])["LD_LIBRARY_PATH"]
        assert path == compose_gpu[name]["environment"]["LD_LIBRARY_PATH"], name


def without_gpu(doc: dict) -> dict:
    """A rendered object with what the GPU overlay changes taken out."""
    doc = copy.deepcopy(doc)
    if doc["kind"] != "Deployment":
        return doc
    pod = doc["spec"]["template"]["spec"]
    pod.pop("nodeSelector", None)
    pod.pop("tolerations", None)
    (one,) = pod["containers"]
    one["image"] = one["image"].removesuffix("-cuda")
    one["resources"]["limits"].pop(GPU, None)
    if doc["metadata"]["name"].removeprefix("mlops-") in GPU_SERVICES:
        one["resources"]["limits"].pop("memory")
    one["env"] = [e for e in one["env"] if e["name"] not in CUDA_SETTINGS]
    return doc


def test_everything_else_is_productions() -> None:
    gpu = [without_gpu(d) for d in objects("gpu")]
    production = [without_gpu(d) for d in objects("production")]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(gpu, key=key) == sorted(production, key=key)
    # and the comparison can fail: the image's tag is the one difference left in the raw objects
    images = {container(d)["image"] for d in deployments("gpu").values()}
    assert images == {"registry.example.com/mlops/mlops:0.1.0-cuda"}
    assert sorted(objects("gpu"), key=key) != sorted(objects("production"), key=key)


def test_gpu_services_get_more_memory_than_production_gives_them() -> None:
    gpu, production = deployments("gpu"), deployments("production")
    for name in GPU_SERVICES:
        more = container(gpu[f"mlops-{name}"])["resources"]["limits"]["memory"]
        less = container(production[f"mlops-{name}"])["resources"]["limits"]["memory"]
        assert int(more.removesuffix("Gi")) > int(less.removesuffix("Gi")), (name, more, less)
