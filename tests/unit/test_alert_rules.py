"""The alerting rules (infra/prometheus/alerts.yml): promtool accepts them and their unit tests
(alerts_test.yml) pass, every alert has a test that fires it, every Prometheus loads them, and the
Kubernetes PrometheusRule holds the same groups in the shape the Prometheus Operator's CRD takes."""

from __future__ import annotations

import os
import shutil

import jsonschema
import yaml

from tests.unit.test_deploy_tools import REPO, run, tool

PROMETHEUS = REPO / "infra/prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts_test.yml"
COMPONENT = REPO / "infra/k8s/components/alerts"

DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE = {
    # spec.groups of the PrometheusRule CRD (monitoring.coreos.com/v1), strict like kubeconform -strict:
    # no CRD schema is in the k8s-schemas cache, so this is its openAPIV3Schema's shape, written out.
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}, "labels": STRINGS},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "labels": STRINGS,
                            "limit": {"type": "integer"},
                            "query_offset": DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": DURATION,
                                        "keep_firing_for": DURATION,
                                        "labels": STRINGS,
                                        "annotations": STRINGS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def untested(rules: list[dict], tests: dict) -> set[str]:
    """Alerts no test case expects to fire."""
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    return {rule["alert"] for rule in rules if "alert" in rule} - fired


def test_promtool_accepts_the_rules() -> None:
    result = run(tool("promtool"), "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_the_rules_unit_tests_pass(tmp_path) -> None:
    result = run(tool("promtool"), "test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    # and they can fail: one expected annotation changed
    shutil.copy(RULES, tmp_path / "alerts.yml")
    wrong = RULE_TESTS.read_text().replace('summary: "registry is down"', 'summary: "registry is up"')
    (tmp_path / "alerts_test.yml").write_text(wrong)
    result = run(tool("promtool"), "test", "rules", tmp_path / "alerts_test.yml")
    assert result.returncode != 0 and "registry is up" in result.stdout + result.stderr


def test_every_alert_has_a_test_that_fires_it() -> None:
    rules, tests = alert_rules(), yaml.safe_load(RULE_TESTS.read_text())
    assert untested(rules, tests) == set()
    # a rule added without a test is found
    assert untested([*rules, {"alert": "MlopsNew", "expr": "vector(1)"}], tests) == {"MlopsNew"}


def test_every_alert_says_how_bad_what_and_which_service() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        assert "{{ $labels.service }}" in text or "{{ $labels.model }}" in text, rule["alert"]
        assert rule["alert"].startswith("Mlops"), rule["alert"]


def test_every_prometheus_config_loads_the_rules_and_compose_mounts_them() -> None:
    for config in ("prometheus.yml", "local.yml"):
        assert yaml.safe_load((PROMETHEUS / config).read_text())["rule_files"] == ["alerts.yml"], config
        result = run(tool("promtool"), "check", "config", PROMETHEUS / config)
        assert result.returncode == 0 and "SUCCESS: 1 rule files found" in result.stdout, result.stdout
    prometheus = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["prometheus"]
    assert "./infra/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus["volumes"]


def test_the_prometheus_rule_is_generated_from_the_rules() -> None:
    result = run(REPO / ".venv/bin/python", "infra/k8s/alert_rules.py", "--check")
    assert result.returncode == 0, result.stderr
    rule = yaml.safe_load((COMPONENT / "prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    jsonschema.validate(rule, PROMETHEUS_RULE)
    broken = {
        **rule,
        "spec": {"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "1", "fro": "1m"}]}]},
    }
    try:
        jsonschema.validate(broken, PROMETHEUS_RULE)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("a misspelt field passed the PrometheusRule schema")


def test_the_alerts_component_builds_with_kustomize(tmp_path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "mlops",
                "components": [os.path.relpath(COMPONENT, overlay)],
            }
        )
    )
    result = run(tool("kustomize"), "build", "--load-restrictor", "LoadRestrictionsNone", overlay)
    assert result.returncode == 0, result.stderr
    built = {doc["kind"]: doc for doc in yaml.safe_load_all(result.stdout) if doc}
    assert set(built) == {"PrometheusRule", "PodMonitor"}
    assert built["PrometheusRule"]["metadata"]["namespace"] == "mlops"
    endpoint = built["PodMonitor"]["spec"]["podMetricsEndpoints"][0]
    # the rules group by `service`, which the pod's name label becomes, as in infra/prometheus's configs
    assert endpoint["port"] == "metrics"
    assert endpoint["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "targetLabel": "service"}
    ]
