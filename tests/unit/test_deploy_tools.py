"""The offline validation tools (infra/k8s/install-tools.sh) run, and what the deployment tests share:
where the tools live, the services and their ports, and the
metrics the dashboard queries with the service that exports each."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MLOPS_CACHE", Path.home() / ".cache/mlops"))
K8S_VERSION = "1.34.0"
DASHBOARD = REPO / "infra/grafana/dashboards/mlops.json"

# every service `infra/local/services.sh` starts, with its ports (the team's port table)
SERVICES = {
    "registry": (50051, 9101),
    "trainer": (50054, 9104),
    "evaluator": (50055, 9105),
    "deployer": (50052, 9102),
    "monitor": (50053, 9103),
    "inference": (8001, 8002),
}

# the services with an HTTP API beside gRPC, and its port: inference's Open Inference Protocol over REST
HTTP_PORTS = {"inference": 8000}

# which service exports a metric, by name prefix; None: the bus, exported by every service
OWNERS = [
    ("mlops_bus_", None),
    ("mlops_outbox_", None),
    ("mlops_trainer_", "trainer"),
    ("mlops_evaluator_", "evaluator"),
    ("mlops_inference_", "inference"),
    ("mlops_rollout", "deployer"),
    ("mlops_rollbacks_", "deployer"),
    ("mlops_drift_", "monitor"),
    ("mlops_prediction_drift_", "monitor"),
    ("mlops_degradation_", "monitor"),
    ("mlops_live_metric", "monitor"),
    ("mlops_monitor_", "monitor"),
]

_METRIC = re.compile(r"\b(mlops_[a-z0-9_]+)\b")
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def tool(name: str) -> Path:
    path = CACHE / "bin" / name
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{name} is not installed at {path}: run `bash infra/k8s/install-tools.sh`", pytrace=False
        )
    return path


def cached(relative: str) -> Path:
    path = CACHE / relative
    if not path.exists():
        pytest.fail(f"{path} is missing: run `bash infra/k8s/install-tools.sh`", pytrace=False)
    return path


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=REPO, timeout=120)


def dashboard_panels() -> list[dict]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [p for p in panels if p.get("type") != "row"]


def dashboard_metrics() -> dict[str, list[str]]:
    """Metric family name -> titles of the panels that query it (histogram series folded into their family)."""
    found: dict[str, list[str]] = {}
    for panel in dashboard_panels():
        for target in panel["targets"]:
            for name in _METRIC.findall(target["expr"]):
                for suffix in _HISTOGRAM_SERIES:
                    if name.endswith(suffix) and not name.endswith("_total"):
                        name = name.removesuffix(suffix)
                        break
                found.setdefault(name, [])
                if panel["title"] not in found[name]:
                    found[name].append(panel["title"])
    return found


def owner_of(metric: str) -> str | None:
    for prefix, owner in OWNERS:
        if metric.startswith(prefix):
            return owner
    raise AssertionError(f"dashboard metric {metric} has no owning service in OWNERS")


def service_exists(name: str) -> bool:
    return (REPO / "services" / name / "__main__.py").is_file()


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("kustomize", ["version"]),
        ("kubeconform", ["-v"]),
        ("hadolint", ["--version"]),
        ("promtool", ["--version"]),
    ],
)
def test_validation_tool_runs(name: str, args: list[str]) -> None:
    result = run(tool(name), *args)
    assert result.returncode == 0, f"{name} {' '.join(args)} failed: {result.stderr}"


def test_every_dashboard_metric_has_an_owner() -> None:
    metrics = dashboard_metrics()
    assert len(metrics) >= 25, sorted(metrics)
    for metric in metrics:
        owner = owner_of(metric)
        assert owner is None or owner in SERVICES, (metric, owner)
