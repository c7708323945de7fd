"""The deployer's traffic series stay bounded: one per version of the latest rollout, not one per
version ever rolled out."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from services.deployer import prometheus


def _versions(model: str) -> set[str]:
    return {
        sample.labels["version"]
        for metric in REGISTRY.collect()
        if metric.name == "mlops_rollout_traffic_percent"
        for sample in metric.samples
        if sample.labels["model"] == model
    }


def test_only_the_latest_rollouts_versions_keep_a_traffic_series():
    model, other = f"m-{uuid.uuid4().hex[:6]}", f"o-{uuid.uuid4().hex[:6]}"
    prometheus.TRAFFIC_PERCENT.labels(other, "1").set(100)
    for version in range(1, 200):
        prometheus.TRAFFIC_PERCENT.labels(model, str(version)).set(10)
        prometheus.keep_traffic_series(model, {str(version), str(version - 1)})
    assert _versions(model) == {"198", "199"}
    assert _versions(other) == {"1"}, "another model's series are not touched"
