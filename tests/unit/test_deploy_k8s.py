"""infra/k8s, offline: both overlays build with kustomize and validate with kubeconform against the
Kubernetes schemas (strict); every service has its Deployment, Service and ServiceAccount with gRPC
probes over TLS and resources; its gRPC is secured as the local stack's (cert-manager certificate,
mutual TLS, token port, settings that production accepts); the inference servers scale; the topics
are the event catalog's."""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.parse
from pathlib import Path

import pytest
import yaml

from mlops.event_catalog import DLQ_SUFFIX, all_events
from mlops.identity import TokenBook
from mlops.settings import DatabaseSettings, GrpcClientSettings, GrpcServerSettings
from tests.unit.test_deploy_tools import CACHE, K8S_VERSION, REPO, SERVICES, cached, run, service_exists, tool

OVERLAYS = ("local", "production")
SCHEMAS = (
    f"{CACHE}/k8s-schemas/{{{{ .NormalizedKubernetesVersion }}}}-standalone{{{{ .StrictSuffix }}}}"
    "/{{ .ResourceKind }}{{ .KindSuffix }}.json"
)


# where each Deployment mounts its gRPC files (infra/k8s/base/<service>.yaml)
GRPC_TLS_MOUNT = "/etc/mlops/grpc-tls"
GRPC_TOKENS_MOUNT = "/etc/mlops/grpc-tokens"


def token_ports(name: str) -> dict[str, int]:
    """The token port (TLS, bearer tokens) beside mutual TLS, as infra/local/services.sh gives every
    service but inference, whose one port takes tokens (OIP clients carry no certificate)."""
    return {} if name == "inference" else {"grpc-token": SERVICES[name][0] + 10}


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
        # Strimzi and cert-manager publish no schema through a registry reachable here: test_topics_*,
        # tests/unit/test_kafka_acl.py and test_grpc_* check them.
        "-skip",
        "KafkaTopic,KafkaUser,Certificate,Issuer",
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
        assert ports == {"grpc": grpc_port, "metrics": metrics_port, **token_ports(name)}
        env = {e["name"]: e.get("value") for e in container["env"]}
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
        tokens = token_ports(name).values()
        assert set(by_port) == {grpc_port, metrics_port, *tokens}, f"{name} opens {sorted(by_port)}"
        for port in tokens:
            # open to the main port's people and to no service: services call the main port, mutual TLS
            people = [
                peer
                for peer in by_port[grpc_port]["from"]
                if "app.kubernetes.io/name" not in peer["podSelector"]["matchLabels"]
            ]
            assert (
                by_port[port]["from"]
                == people
                == [{"podSelector": {"matchLabels": {"mlops/client": "true"}}}]
            )
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


def _by_kind(docs: list[dict]) -> dict[str, dict[str, dict]]:
    found: dict[str, dict[str, dict]] = {}
    for doc in docs:
        found.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_certificates_name_each_service_and_come_from_the_ca_issuer(overlay: str) -> None:
    docs = objects(overlay)
    by_kind = _by_kind(docs)
    namespace = by_kind["Deployment"]["mlops-registry"]["metadata"]["namespace"]
    certificates = {c["spec"]["secretName"]: c for c in by_kind["Certificate"].values()}
    issuer = by_kind["Issuer"]["mlops-grpc-ca"]
    assert (
        issuer["apiVersion"] == "cert-manager.io/v1" and issuer["spec"]["ca"]["secretName"] == "mlops-grpc-ca"
    )
    for name in SERVICES:
        if not service_exists(name):
            continue
        certificate = certificates.pop(f"mlops-{name}-tls")
        spec = certificate["spec"]
        assert certificate["apiVersion"] == "cert-manager.io/v1"
        assert spec["commonName"] == f"svc:{name}"
        assert spec["subject"]["organizationalUnits"] == ["service"], (
            "the OU is the role mlops.identity reads"
        )
        assert {"server auth", "client auth"} <= set(spec["usages"]), name
        # the names its peers dial (MLOPS_REGISTRY_ADDR=registry:50051) and the namespace's long forms
        assert {name, f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"} <= set(
            spec["dnsNames"]
        )
        assert spec["issuerRef"] == {"group": "cert-manager.io", "kind": "Issuer", "name": "mlops-grpc-ca"}
        assert spec["privateKey"]["rotationPolicy"] == "Always"
        hours = {key: int(spec[key].removesuffix("h")) for key in ("duration", "renewBefore")}
        assert 0 < hours["renewBefore"] < hours["duration"], "renewed while the old one is still valid"
    if overlay == "local":  # a self-signed bootstrap CA for a laptop; production brings its own
        ca = certificates.pop("mlops-grpc-ca")["spec"]
        assert ca["isCA"] is True
        assert by_kind["Issuer"][ca["issuerRef"]["name"]]["spec"] == {"selfSigned": {}}
    assert not certificates, f"certificates no service mounts: {sorted(certificates)}"


def _grpc_volumes(pod: dict, container: dict) -> dict[str, tuple[str, dict]]:
    """Volume name → (mount path, volume) for the gRPC files, with the mounts' read-only flag checked."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    found = {}
    for mount in container["volumeMounts"]:
        if mount["name"] in ("grpc-tls", "grpc-tokens", "grpc-probe"):
            assert mount.get("readOnly") is True, mount
            found[mount["name"]] = (mount["mountPath"], volumes[mount["name"]])
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_is_secured_as_on_the_local_stack_and_production_accepts_it(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = objects(overlay)
    by_kind = _by_kind(docs)
    config = next(v for k, v in by_kind["ConfigMap"].items() if k.startswith("mlops-config"))["data"]
    for name, (grpc_port, _) in SERVICES.items():
        if not service_exists(name):
            continue
        pod = by_kind["Deployment"][f"mlops-{name}"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        grpc = _grpc_volumes(pod, container)
        tls_path, tls = grpc["grpc-tls"]
        assert tls_path == GRPC_TLS_MOUNT
        assert tls["secret"]["secretName"] == f"mlops-{name}-tls"
        assert tls["secret"]["defaultMode"] in (0o400, 0o440), "keys readable by the service alone"
        tokens_path, tokens = grpc["grpc-tokens"]
        assert tokens_path == GRPC_TOKENS_MOUNT
        assert tokens["secret"]["secretName"].startswith("mlops-grpc-tokens")
        assert tokens["secret"]["items"] == [{"key": "tokens", "path": "tokens"}]
        assert tokens["secret"]["defaultMode"] in (0o400, 0o440)
        env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("MLOPS_GRPC")}
        expected = {
            "MLOPS_GRPC_TLS_CERT": f"{tls_path}/tls.crt",
            "MLOPS_GRPC_TLS_KEY": f"{tls_path}/tls.key",
            "MLOPS_GRPC_AUTH": "true",
            "MLOPS_GRPC_TOKEN_FILE": f"{tokens_path}/tokens",
            "MLOPS_GRPC_CLIENT_CA_FILE": f"{tls_path}/ca.crt",
            "MLOPS_GRPC_CLIENT_CERT_FILE": f"{tls_path}/tls.crt",
            "MLOPS_GRPC_CLIENT_KEY_FILE": f"{tls_path}/tls.key",
        }
        if name != "inference":
            expected |= {
                "MLOPS_GRPC_TLS_CLIENT_CA": f"{tls_path}/ca.crt",
                "MLOPS_GRPC_TOKEN_PORT": str(grpc_port + 10),
            }
        assert env == expected, name
        mounted = {item["path"] for item in tls["secret"]["items"]}
        assert {"tls.crt", "tls.key", "ca.crt"} <= mounted

        # What the service's settings make of it, with the mounted files where they would be
        root = tmp_path / name
        for key in mounted:
            (root / tls_path.lstrip("/") / key).parent.mkdir(parents=True, exist_ok=True)
            (root / tls_path.lstrip("/") / key).write_text("PEM")
        (root / tokens_path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (root / tokens_path.lstrip("/") / "tokens").write_text("")
        for key in [k for k in os.environ if k.startswith("MLOPS_GRPC")]:
            monkeypatch.delenv(key)  # the stack's, which conftest adopts: only the manifest's count here
        for key in [k for k in config if k.startswith("MLOPS_GRPC")]:
            monkeypatch.setenv(key, config[key])
        for key, value in env.items():
            monkeypatch.setenv(key, str(root) + value if value.startswith("/") else value)
        monkeypatch.setenv("MLOPS_ENV", "production")
        server = GrpcServerSettings(host="0.0.0.0", port=grpc_port)
        assert server.auth and server.tls_cert and server.token_file
        assert (server.tls_client_ca is not None) == (name != "inference")
        assert server.token_port == token_ports(name).get("grpc-token")
        assert GrpcClientSettings().secure


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_probe_script_is_the_one_mounted(overlay: str) -> None:
    by_kind = _by_kind(objects(overlay))
    script = (REPO / "infra/k8s/base/grpc_probe.py").read_text()
    for deployment in by_kind["Deployment"].values():
        pod = deployment["spec"]["template"]["spec"]
        _, volume = _grpc_volumes(pod, pod["containers"][0])["grpc-probe"]
        assert by_kind["ConfigMap"][volume["configMap"]["name"]]["data"]["grpc_probe.py"] == script


def test_local_tokens_parse_and_production_brings_none() -> None:
    local = _by_kind(objects("local"))["Secret"]
    (name,) = [n for n in local if n.startswith("mlops-grpc-tokens")]
    assert len(TokenBook.parse(base64.b64decode(local[name]["data"]["tokens"]).decode())) >= 1
    assert "Secret" not in _by_kind(objects("production")), "production's token Secret is the operator's"
