"""What the infra/k8s tests share: both overlays built with kustomize and read as objects, kubeconform on
the Kubernetes schemas, the token ports and the mounts of each Deployment's gRPC files."""

from __future__ import annotations

import yaml

from tests.unit.test_deploy_tools import CACHE, HTTP_PORTS, K8S_VERSION, SERVICES, cached, run, tool

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


def http_ports(name: str) -> dict[str, int]:
    """The HTTP port beside gRPC, named `http`, of a service that has one (inference: OIP over REST)."""
    return {"http": HTTP_PORTS[name]} if name in HTTP_PORTS else {}


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
