"""infra/k8s, offline: both overlays build with kustomize and validate with kubeconform against the
Kubernetes schemas (strict); every service has its Deployment, Service and ServiceAccount with gRPC
probes and resources; the inference servers scale; the topics are the event catalog's."""

from __future__ import annotations

import pytest
import yaml

from mlops.bus.catalog import DLQ_SUFFIX, all_events
from tests.unit.test_deploy_tools import CACHE, K8S_VERSION, REPO, SERVICES, cached, run, service_exists, tool

OVERLAYS = ("local", "production")
SCHEMAS = (
    f"{CACHE}/k8s-schemas/{{{{ .NormalizedKubernetesVersion }}}}-standalone{{{{ .StrictSuffix }}}}"
    "/{{ .ResourceKind }}{{ .KindSuffix }}.json"
)


def build(overlay: str) -> str:
    result = run(tool("kustomize"), "build", f"infra/k8s/overlays/{overlay}")
    assert result.returncode == 0, result.stderr
    return result.stdout


def objects(overlay: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(build(overlay)) if doc]


def kubeconform(path) -> str:
    cached(f"k8s-schemas/v{K8S_VERSION}-standalone-strict")
    result = run(
        tool("kubeconform"),
        "-strict",
        "-summary",
        "-kubernetes-version",
        K8S_VERSION,
        "-schema-location",
        SCHEMAS,
        # Strimzi publishes no schema through a registry reachable here: test_topics_* and
        # tests/unit/test_kafka_acl.py check them.
        "-skip",
        "KafkaTopic,KafkaUser",
        path,
    )
    return result


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_the_kubernetes_schemas(overlay: str, tmp_path) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(build(overlay))
    result = kubeconform(path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert "Invalid: 0, Errors: 0" in summary, summary
    valid = int(summary.split("Valid: ")[1].split(",")[0])
    assert valid >= 3 * len(SERVICES) + 2, summary  # nothing silently skipped for want of a schema


def test_kubeconform_rejects_a_broken_manifest(tmp_path) -> None:
    docs = objects("local")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    deployment["spec"]["replica"] = 2
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = kubeconform(path)
    assert result.returncode != 0 and "Invalid: 1" in result.stdout, result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_deployment_service_and_account(overlay: str) -> None:
    docs = objects(overlay)
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    for name, (grpc_port, metrics_port) in SERVICES.items():
        if not service_exists(name):
            continue
        deployment = by_kind["Deployment"][f"mlops-{name}"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] in by_kind["ServiceAccount"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", f"services.{name}"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port, (name, probe)
        resources = container["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": grpc_port, "metrics": metrics_port}
        env = {e["name"]: e.get("value") for e in container["env"]}
        prefix = f"MLOPS_{name.upper()}_"
        assert env[prefix + "GRPC_HOST"] == "0.0.0.0"
        assert env[prefix + "METRICS_PORT"] == str(metrics_port)
        sources = [next(iter(s.values()))["name"] for s in container["envFrom"]]
        assert any(s.startswith("mlops-config") for s in sources) and any(
            s.startswith("mlops-secrets") for s in sources
        )
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics_port)
        service = by_kind["Service"][name]
        assert {p["port"] for p in service["spec"]["ports"]} == {grpc_port, metrics_port}
        assert (
            service["spec"]["selector"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
    configs = [n for n in by_kind["ConfigMap"] if n.startswith("mlops-config")]
    assert len(configs) == 1
    config = by_kind["ConfigMap"][configs[0]]["data"]
    assert config["MLOPS_REGISTRY_ADDR"] == "registry:50051"
    assert config["MLOPS_MONITOR_ADDR"] == "monitor:50053"
    assert not {"MLOPS_DATABASE_URL", "AWS_SECRET_ACCESS_KEY"} & set(config), "secrets belong in the Secret"


def test_inference_scales_with_an_autoscaler() -> None:
    for overlay in OVERLAYS:
        hpa = next(d for d in objects(overlay) if d["kind"] == "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "mlops-inference"
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"] >= 1


def test_production_brings_no_secret_values_and_refuses_development_passwords() -> None:
    docs = objects("production")
    assert not [d for d in docs if d["kind"] == "Secret"], (
        "production's Secret is created outside the repository"
    )
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert config["MLOPS_ENV"] == "production"


def test_topics_file_is_generated_from_the_catalog() -> None:
    result = run(REPO / ".venv/bin/python", "infra/k8s/topics.py", "--check")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_cover_every_event_with_its_dead_letter_topic(overlay: str) -> None:
    topics = {d["spec"]["topicName"]: d for d in objects(overlay) if d["kind"] == "KafkaTopic"}
    partitions = {name: topic["spec"]["partitions"] for name, topic in topics.items()}
    expected_replicas = 1 if overlay == "local" else 3
    for spec in all_events():
        for name in (spec.topic, spec.topic + DLQ_SUFFIX):
            topic = topics.pop(name, None)
            assert topic is not None, f"no KafkaTopic for {name}"
            assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
            assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "mlops"
            assert topic["spec"]["replicas"] == expected_replicas
            assert topic["spec"]["config"]["min.insync.replicas"] <= expected_replicas
            assert isinstance(topic["spec"]["partitions"], int) and topic["spec"]["partitions"] >= 3
            compacted = spec.compacted and name == spec.topic
            assert (topic["spec"]["config"]["cleanup.policy"] == "compact") == compacted, name
        if not spec.compacted:
            # consumer groups scale out to as many replicas as partitions
            assert partitions[spec.topic] >= 6
    assert not topics, f"KafkaTopics for topics the catalog does not have: {sorted(topics)}"


# Who calls whose gRPC API (DESIGN.md): the only pod-to-pod edges the network policies may open.
GRPC_CALLERS = {
    "registry": {"trainer", "evaluator", "deployer", "monitor", "inference"},
    "deployer": set(),
    "monitor": {"deployer"},
    "trainer": set(),
    "evaluator": set(),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_open_only_the_edges_of_the_design(overlay: str) -> None:
    policies = {
        doc["metadata"]["name"]: doc["spec"] for doc in objects(overlay) if doc["kind"] == "NetworkPolicy"
    }
    deny = policies["mlops-default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    for name, (grpc_port, metrics_port) in SERVICES.items():
        if not service_exists(name):
            continue
        spec = policies[f"mlops-{name}"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == name
        by_port = {rule["ports"][0]["port"]: rule for rule in spec["ingress"]}
        assert set(by_port) == {grpc_port, metrics_port}, f"{name} opens {sorted(by_port)}"
        assert by_port[metrics_port]["from"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
        if name == "inference":
            assert "from" not in by_port[grpc_port], "the data plane answers any caller"
            continue
        peers = {
            peer["podSelector"]["matchLabels"].get("app.kubernetes.io/name")
            for peer in by_port[grpc_port]["from"]
            if "app.kubernetes.io/name" in peer["podSelector"]["matchLabels"]
        }
        assert peers == GRPC_CALLERS[name], f"{name}'s API is open to {sorted(peers)}"
        callees = {
            rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
            for rule in spec.get("egress", [])
        }
        assert callees == {callee for callee, callers in GRPC_CALLERS.items() if name in callers}


def test_production_reaches_kafka_over_sasl_ssl_each_service_as_its_own_principal() -> None:
    docs = objects("production")
    config = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("mlops-config")
    )
    assert config["data"]["MLOPS_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["data"]["MLOPS_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    users = {d["metadata"]["name"] for d in docs if d["kind"] == "KafkaUser"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name in SERVICES:
        if not service_exists(name):
            continue
        pod = deployments[f"mlops-{name}"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["MLOPS_KAFKA_SASL_USERNAME"]["value"] == name and name in users
        assert "MLOPS_KAFKA_SASL_PASSWORD" not in env, "a password is a mounted file, never a variable"
        volumes = {v["name"]: v for v in pod["volumes"]}
        password = volumes["kafka-password"]["secret"]
        assert password["secretName"] == name, f"{name} mounts another principal's password"
        assert password["items"] == [{"key": "password", "path": "MLOPS_KAFKA_SASL_PASSWORD"}]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["kafka-password"] == config["data"]["MLOPS_SECRETS_DIR"]
        assert config["data"]["MLOPS_KAFKA_SSL_CAFILE"].startswith(mounts["kafka-ca"])
