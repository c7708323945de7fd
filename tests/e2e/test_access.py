"""Who may steer the running platform, asked of the services `make up` started, through their real ports.

For every mutating RPC of every service: no credentials → UNAUTHENTICATED, a role short of the
method's → PERMISSION_DENIED, each with a message that says what to do; the right role gets past the
gate to the handler. Clients without TLS, or without a certificate where mutual TLS is asked, do not
get past the handshake. Ledgers record the authenticated caller, not the name it typed. The inference
server answers nothing, health and metadata included, to a caller without a token.

Calls carry empty requests: the gate answers before any handler reads one, and a handler that is
reached answers INVALID_ARGUMENT about the empty request, which is how the tests tell the two apart.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc
import pytest

from mlops.grpc.access import TABLE
from mlops.identity import Role
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from tests.integration.registry_helpers import DESIGN_SPEC, spec_from_yaml

ROOT = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("MLOPS_STACK_DIR", ROOT / ".stack"))
CLIENTS, PKI = STACK / "clients", STACK / "pki"
TOKEN_PORT_OFFSET = 10
"""infra/local/services.sh: each service's token listener is its port + 10."""
PORTS = {
    "mlops.registry.v1.Registry": 50051,
    "mlops.deployer.v1.Deployer": 50052,
    "mlops.monitor.v1.Monitor": 50053,
}
INFERENCE = "127.0.0.1:8001"
MUTATING = [
    (service, method, rule.least)
    for service, methods in TABLE.items()
    if service in PORTS
    for method, rule in methods.items()
    if rule.least is not Role.VIEWER
]


def test_every_service_with_an_api_has_mutating_methods_under_test():
    assert {service for service, _, _ in MUTATING} == {
        "mlops.registry.v1.Registry",
        "mlops.deployer.v1.Deployer",
    }
    named = {"StartRollout", "Promote", "Rollback", "SetAlias", "RegisterModelVersion", "ApplyModelSpec"}
    assert named <= {method for _, method, _ in MUTATING}


def _token(person: str) -> str:
    return (CLIENTS / f"{person}.token").read_text().strip()


def _tls(*, cert: str | None = None, key_dir: Path = CLIENTS) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (CLIENTS / "ca.pem").read_bytes(),
        (key_dir / f"{cert}.key").read_bytes() if cert else None,
        (key_dir / f"{cert}.pem").read_bytes() if cert else None,
    )


def _call(
    address: str,
    full_method: str,
    credentials: grpc.ChannelCredentials | None,
    token: str | None = None,
    request: bytes = b"",
) -> grpc.RpcError | bytes:
    """One raw unary call; the error it ends with, or the reply's bytes."""
    metadata = [("authorization", f"Bearer {token}")] if token else None
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        call = channel.unary_unary(full_method)
        try:
            return call(request, timeout=10, metadata=metadata)
        except grpc.RpcError as error:
            return error


def _token_address(service: str) -> str:
    return f"127.0.0.1:{PORTS[service] + TOKEN_PORT_OFFSET}"


def _mtls_address(service: str) -> str:
    return f"127.0.0.1:{PORTS[service]}"


def _short(service: str, method: str) -> str:
    return f"{service.rsplit('.', 1)[-1]}/{method}"


@pytest.mark.parametrize(
    ("service", "method", "least"), MUTATING, ids=[f"{s.rsplit('.', 1)[-1]}.{m}" for s, m, _ in MUTATING]
)
def test_a_mutating_rpc_refuses_the_unauthenticated_and_the_short_of_role(service, method, least):
    full = f"/{service}/{method}"
    name = _short(service, method)

    nobody = _call(_token_address(service), full, _tls())
    assert nobody.code() == grpc.StatusCode.UNAUTHENTICATED, f"{name}: {nobody}"
    assert "no client certificate or bearer token" in nobody.details()

    stranger = _call(_token_address(service), full, _tls(), token="not-a-token-of-this-stack")
    assert stranger.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not known to this server" in stranger.details()

    short_roles = [r for r in (Role.VIEWER, Role.OPERATOR) if not r.at_least(least)]
    for role in short_roles:
        by_token = _call(_token_address(service), full, _tls(), token=_token(role.value))
        assert by_token.code() == grpc.StatusCode.PERMISSION_DENIED, f"{name} as {role}: {by_token}"
        assert by_token.details().startswith(
            f"user:{role.value} ({role.value}) may not call {name}: it needs"
        )
        by_certificate = _call(_mtls_address(service), full, _tls(cert=role.value))
        assert by_certificate.code() == grpc.StatusCode.PERMISSION_DENIED, (
            f"{name} as {role}: {by_certificate}"
        )

    # the inference server's identity may write nothing to the control plane
    as_inference = _call(_mtls_address(service), full, _tls(cert="inference", key_dir=PKI / "grpc"))
    assert as_inference.code() == grpc.StatusCode.PERMISSION_DENIED, f"{name}: {as_inference}"
    assert as_inference.details().startswith(f"svc:inference (service) may not call {name}")

    # the least role that may: past the gate, the handler refuses the empty request itself
    allowed = _call(_token_address(service), full, _tls(), token=_token(least.value))
    assert not isinstance(allowed, grpc.RpcError) or allowed.code() not in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    ), f"{name} as {least}: {allowed}"


@pytest.mark.parametrize("service", sorted(PORTS))
def test_no_client_gets_past_tls_without_what_the_port_asks(service):
    method = f"/{service}/{next(iter(TABLE[service]))}"
    for address in (_mtls_address(service), _token_address(service)):
        plaintext = _call(address, method, None, token=None)
        assert plaintext.code() == grpc.StatusCode.UNAVAILABLE, f"plaintext to {address}: {plaintext}"
    # mutual TLS on the main port: a client without a certificate does not finish the handshake
    no_certificate = _call(_mtls_address(service), method, _tls(), token=_token("admin"))
    assert no_certificate.code() == grpc.StatusCode.UNAVAILABLE, f"{no_certificate}"


def test_a_viewer_reads_and_health_needs_no_credentials():
    listing = _call(
        _token_address("mlops.registry.v1.Registry"),
        "/mlops.registry.v1.Registry/ListModelSpecs",
        _tls(),
        token=_token("viewer"),
    )
    assert isinstance(listing, bytes)
    health = _call(
        _mtls_address("mlops.registry.v1.Registry"), "/grpc.health.v1.Health/Check", _tls(cert="viewer")
    )
    assert isinstance(health, bytes)
    open_health = _call(_token_address("mlops.deployer.v1.Deployer"), "/grpc.health.v1.Health/Check", _tls())
    assert isinstance(open_health, bytes)


def test_the_ledger_records_the_authenticated_caller_not_the_name_it_typed(unique):
    spec = spec_from_yaml(DESIGN_SPEC, f"access-{unique}", f"ds-{unique}")
    metadata = [("authorization", f"Bearer {_token('admin')}")]
    with grpc.secure_channel(_token_address("mlops.registry.v1.Registry"), _tls()) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        applied = stub.ApplyModelSpec(
            pb.ApplyModelSpecRequest(spec=spec, applied_by="user:somebody-else"),
            metadata=metadata,
            timeout=10,
        )
        assert applied.applied.applied_by == "user:admin"
        stored = stub.GetModelSpec(
            pb.GetModelSpecRequest(model=f"access-{unique}"), metadata=metadata, timeout=10
        )
        assert stored.applied_by == "user:admin"


@pytest.mark.parametrize(
    "method", ["ServerLive", "ServerReady", "ServerMetadata", "ModelMetadata", "ModelReady", "ModelInfer"]
)
def test_the_inference_server_answers_nothing_without_a_token(method):
    full = f"/inference.GRPCInferenceService/{method}"
    refused = _call(INFERENCE, full, _tls())
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, f"{method}: {refused}"
    plaintext = _call(INFERENCE, full, None)
    assert plaintext.code() == grpc.StatusCode.UNAVAILABLE
    answered = _call(INFERENCE, full, _tls(), token=_token("viewer"))
    assert isinstance(answered, bytes) or answered.code() not in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    ), f"{method} as viewer: {answered}"


TRITON = r"""
import os, sys
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

client = grpcclient.InferenceServerClient(sys.argv[1], ssl=True, root_certificates=os.environ["TRITON_CA"])
token = {"authorization": "Bearer " + open(os.environ["TRITON_TOKEN_FILE"]).read().strip()}
print("with token:", client.is_server_live(headers=token), client.is_server_ready(headers=token))
try:
    client.is_server_live()
    print("without token: answered")
except InferenceServerException as error:
    print("without token:", error.status(), error.message())
"""


def test_an_unmodified_tritonclient_with_tls_and_a_token_header_is_served(tmp_path):
    from tests.integration.inference_helpers import TRITON_PYTHON

    script = tmp_path / "triton_tls.py"
    script.write_text(TRITON)
    result = subprocess.run(
        [str(TRITON_PYTHON), str(script), INFERENCE],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "TRITON_CA": str(CLIENTS / "ca.pem"),
            "TRITON_TOKEN_FILE": str(CLIENTS / "viewer.token"),
        },
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "with token: True True"
    assert lines[1].startswith(
        "without token: StatusCode.UNAUTHENTICATED no client certificate or bearer token"
    )
