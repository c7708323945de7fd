"""infra/k8s, offline: both overlays build with kustomize and validate with kubeconform against the
Kubernetes schemas (strict); every service has its Deployment, Service and ServiceAccount with gRPC
probes over TLS and resources, and reads its own secret; the inference servers scale; the topics are the
event catalog's."""

from __future__ import annotations

import base64
import json
import re
import urllib.parse

import pytest
import yaml

from mlops.event_catalog import DLQ_SUFFIX, all_events
from mlops.settings import DatabaseSettings
from tests.unit.deploy_k8s_helpers import (
    OVERLAYS,
    build,
    http_ports,
    kubeconform,
    objects,
    token_ports,
)
from tests.unit.test_deploy_tools import REPO, SERVICES, run, service_exists


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
    deployment = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlops-registry"
    )
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"] = "python"
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
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # Kubernetes' grpc: probe speaks plaintext, and every gRPC port speaks TLS
            assert "grpc" not in container[probe] and "tcpSocket" not in container[probe], (name, probe)
            command = container[probe]["exec"]["command"]
            assert command[:4] == ["python", f"{mounts['grpc-probe']}/grpc_probe.py", str(grpc_port), name]
            assert container[probe]["timeoutSeconds"] >= 3, "a python start may take a second on a busy node"
        assert "--fresh" in container["livenessProbe"]["exec"]["command"], (
            "renewed certificates need a restart"
        )
        resources = container["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": grpc_port, "metrics": metrics_port, **token_ports(name), **http_ports(name)}
        env = {e["name"]: e.get("value") for e in container["env"]}
        for http_port in http_ports(name).values():
            assert env[f"MLOPS_{name.upper()}_HTTP_PORT"] == str(http_port), name
        prefix = f"MLOPS_{name.upper()}_"
        assert env[prefix + "GRPC_HOST"] == "0.0.0.0"
        assert env[prefix + "METRICS_PORT"] == str(metrics_port)
        sources = [next(iter(s.values()))["name"] for s in container["envFrom"]]
        assert any(s.startswith("mlops-config") for s in sources)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics_port)
        service = by_kind["Service"][name]
        assert {p["port"] for p in service["spec"]["ports"]} == {
            grpc_port,
            metrics_port,
            *token_ports(name).values(),
            *http_ports(name).values(),
        }
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


# Where production mounts PostgreSQL's CA (overlays/production/postgres-ca.yaml)
POSTGRES_CA_MOUNT = "/etc/mlops/postgres-ca"
SECRET_KEYS = {"MLOPS_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def secret_keys(name: str) -> set[str]:
    """What a service's own Secret holds: inference has no database."""
    return SECRET_KEYS - {"MLOPS_DATABASE_URL"} if name == "inference" else SECRET_KEYS


def _secret_sources(container: dict) -> list[str]:
    """Every Secret a container reads: envFrom, env valueFrom."""
    names = [s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s]
    names += [
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_reads_its_own_secret_and_no_other(overlay: str) -> None:
    deployments = {d["metadata"]["name"]: d for d in objects(overlay) if d["kind"] == "Deployment"}
    for name in SERVICES:
        if not service_exists(name):
            continue
        (container,) = deployments[f"mlops-{name}"]["spec"]["template"]["spec"]["containers"]
        (secret,) = _secret_sources(container)
        own = f"mlops-{name}-secrets"
        # the local overlay's generated Secrets carry a content hash after the name
        assert secret == own or (overlay == "local" and secret.startswith(own + "-")), (name, secret)


def test_local_secrets_hold_each_services_own_role_and_account() -> None:
    docs = objects("local")
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name in SERVICES:
        if not service_exists(name):
            continue
        (container,) = deployments[f"mlops-{name}"]["spec"]["template"]["spec"]["containers"]
        (secret,) = _secret_sources(container)
        data = {k: base64.b64decode(v).decode() for k, v in secrets[secret]["data"].items()}
        assert set(data) == secret_keys(name), name
        assert data["AWS_ACCESS_KEY_ID"] == name, "the S3 account is named after its service"
        if "MLOPS_DATABASE_URL" in data:
            url = urllib.parse.urlsplit(data["MLOPS_DATABASE_URL"])
            assert (url.username, url.hostname, url.path) == (name, "postgres", "/mlops"), name
    assert not [n for n in secrets if n.startswith("mlops-secrets")], "no Secret shared by every service"


def test_production_mounts_postgres_ca_for_services_with_a_database_and_accepts_their_urls(
    monkeypatch,
) -> None:
    deployments = {d["metadata"]["name"]: d for d in objects("production") if d["kind"] == "Deployment"}
    comment = (REPO / "infra/k8s/overlays/production/kustomization.yaml").read_text()
    documented = re.search(r"MLOPS_DATABASE_URL='([^']+)'", comment)
    assert documented, "the production overlay documents the URL each Secret holds"
    url = documented[1].replace("<password>", "s3cr3t-pw").replace("<host>", "db.example.com")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["sslmode"] == "verify-full"
    for name in SERVICES:
        if not service_exists(name):
            continue
        pod = deployments[f"mlops-{name}"]["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        if name == "inference":
            assert "postgres-ca" not in volumes, "inference has no database"
            continue
        assert mounts["postgres-ca"] == POSTGRES_CA_MOUNT, name
        assert volumes["postgres-ca"]["secret"]["secretName"] == "mlops-postgres-ca"
        assert volumes["postgres-ca"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert query["sslrootcert"] == f"{POSTGRES_CA_MOUNT}/ca.crt"
    monkeypatch.setenv("MLOPS_ENV", "production")
    monkeypatch.setenv("MLOPS_DATABASE_URL", url)
    dsn = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(DatabaseSettings().asyncpg_dsn).query))
    assert dsn == {"sslmode": "verify-full", "sslrootcert": f"{POSTGRES_CA_MOUNT}/ca.crt"}
    # and the check can fail: the same URL without TLS is refused
    monkeypatch.setenv("MLOPS_DATABASE_URL", url.split("?")[0])
    with pytest.raises(ValueError, match="no TLS"):
        DatabaseSettings()


def test_production_roles_and_bucket_policy_are_generated_from_the_local_stacks_tables() -> None:
    result = run(REPO / ".venv/bin/python", "infra/k8s/accounts.py", "--check")
    assert result.returncode == 0, result.stderr
    sql = (REPO / "infra/k8s/overlays/production/postgres-roles.sql").read_text()
    assert " PASSWORD '" not in sql and "SCRAM-SHA-256$" not in sql, "no password in the file"
    for name in SERVICES:
        if name != "inference":
            assert f'ALTER SCHEMA "{name}" OWNER TO "{name}";' in sql
            assert f'REVOKE CREATE, TEMPORARY ON DATABASE "mlops" FROM "{name}";' in sql
    policy = json.loads((REPO / "infra/k8s/overlays/production/s3-policy.json").read_text())
    principals = {p for s in policy["Statement"] for p in s["Principal"]["AWS"]}
    assert principals <= set(SERVICES) and "deployer" not in principals
    assert not {a for s in policy["Statement"] for a in s["Action"]} - {
        "s3:GetObject",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
    }, "no listing, no deleting, no bucket settings"


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
