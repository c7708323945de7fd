"""infra/k8s, offline: the network policies open only the edges of the design; production reaches Kafka
over SASL_SSL as each service's own principal; each service's gRPC is secured as the local stack's
(cert-manager certificate, mutual TLS, token port, settings that production accepts), with the probe
script mounted that the repository holds; the local tokens parse and production brings none."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from mlops.identity import TokenBook
from mlops.settings import GrpcClientSettings, GrpcServerSettings
from tests.unit.deploy_k8s_helpers import (
    GRPC_TLS_MOUNT,
    GRPC_TOKENS_MOUNT,
    OVERLAYS,
    http_ports,
    objects,
    token_ports,
)
from tests.unit.test_deploy_tools import REPO, SERVICES, service_exists

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
        http = http_ports(name).values()
        assert set(by_port) == {grpc_port, metrics_port, *tokens, *http}, f"{name} opens {sorted(by_port)}"
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
            for port in (grpc_port, *http):
                assert "from" not in by_port[port], "the data plane answers any caller, over gRPC and REST"
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
        if deployment["metadata"]["name"] == "mlops-console":
            continue  # HTTP probes: the console runs no gRPC server
        _, volume = _grpc_volumes(pod, pod["containers"][0])["grpc-probe"]
        assert by_kind["ConfigMap"][volume["configMap"]["name"]]["data"]["grpc_probe.py"] == script


def test_local_tokens_parse_and_production_brings_none() -> None:
    local = _by_kind(objects("local"))["Secret"]
    (name,) = [n for n in local if n.startswith("mlops-grpc-tokens")]
    assert len(TokenBook.parse(base64.b64decode(local[name]["data"]["tokens"]).decode())) >= 1
    assert "Secret" not in _by_kind(objects("production")), "production's token Secret is the operator's"
