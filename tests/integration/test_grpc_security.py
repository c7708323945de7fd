"""The gRPC security layer end to end, in process: TLS, mutual TLS, bearer tokens, the access table and
the principal a handler sees. The Deployer's own servicer is served; its core is a stand-in that records
who called, since what is under test is the transport in front of it."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mlops.deployer.v1 import deployer_pb2 as dpb
from mlops.deployer.v1 import deployer_pb2_grpc
from mlops.grpc import GrpcServer, open_channel
from mlops.grpc.auth import NO_CREDENTIALS
from mlops.identity import Principal, Role, current_principal, token_line
from mlops.settings import GrpcClientSettings, GrpcServerSettings
from services.deployer.servicer import SERVICE_NAME, DeployerServicer

VIEWER_TOKEN = "viewer-token-0f3a"
OPERATOR_TOKEN = "operator-token-9c1e"


# --- certificates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            _builder(subject, subject, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def issue(self, directory: Path, stem: str, cn: str, ou: str | None = None, *, server: bool = False):
        """Writes `<stem>.pem` and `<stem>.key`; returns their paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if ou:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
        builder = _builder(x509.Name(attributes), self.cert.subject, key).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: tuple[Path, Path]
    operator: tuple[Path, Path]
    viewer: tuple[Path, Path]
    monitor: tuple[Path, Path]
    stranger: tuple[Path, Path]
    other_ca: Path
    tokens: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other = Authority.create("test CA"), Authority.create("someone else's CA")
    tokens = root / "tokens"
    tokens.write_text(
        f"{token_line(VIEWER_TOKEN, 'user:alice', Role.VIEWER)}\n{token_line(OPERATOR_TOKEN, 'user:bob', Role.OPERATOR)}\n"
    )
    return Pki(
        ca=ca.write(root / "ca.pem"),
        server=ca.issue(root, "server", "deployer.local", server=True),
        operator=ca.issue(root, "olive", "user:olive", "operator"),
        viewer=ca.issue(root, "vera", "user:vera", "viewer"),
        monitor=ca.issue(root, "monitor", "svc:monitor", "service"),
        stranger=other.issue(root, "stranger", "user:olive", "admin"),
        other_ca=other.write(root / "other-ca.pem"),
        tokens=tokens,
    )


@pytest.fixture(autouse=True)
def _settings_state_their_own(monkeypatch):
    """The tests' process carries the stack's gRPC settings (tests/conftest.py); these servers and
    clients name every setting themselves."""
    for name in [n for n in os.environ if n.startswith("MLOPS_GRPC_")]:
        monkeypatch.delenv(name)


# --- the server under test ---------------------------------------------------------------------


class RecordingCore:
    """Stands in for DeployerCore: answers at once and keeps the principal each call ran as."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Principal | None, str]] = []

    async def promote(self, *, model, rollout_id, actor, reason) -> dpb.Rollout:
        self.calls.append(("promote", current_principal(), actor))
        return dpb.Rollout(rollout_id=rollout_id or "r-1", model=model)

    async def get_rollout(self, *, model, rollout_id) -> dpb.Rollout:
        self.calls.append(("get_rollout", current_principal(), ""))
        return dpb.Rollout(rollout_id=rollout_id or "r-1", model=model)


@dataclass
class Served:
    address: str
    core: RecordingCore


async def _serve(settings: GrpcServerSettings):
    core = RecordingCore()
    server = GrpcServer(settings)
    server.add(DeployerServicer(core).register, SERVICE_NAME)  # type: ignore[arg-type]
    port = await server.start()
    await server.set_serving()
    return server, Served(f"127.0.0.1:{port}", core)


@pytest.fixture
async def token_server(pki):
    """TLS without client certificates: people prove themselves with bearer tokens."""
    settings = GrpcServerSettings(
        port=0, tls_cert=pki.server[0], tls_key=pki.server[1], auth=True, token_file=pki.tokens
    )
    server, served = await _serve(settings)
    yield served
    await server.stop()


@pytest.fixture
async def mtls_server(pki):
    """Mutual TLS: every client presents a certificate the CA signed."""
    settings = GrpcServerSettings(
        port=0,
        tls_cert=pki.server[0],
        tls_key=pki.server[1],
        tls_client_ca=pki.ca,
        auth=True,
        token_file=pki.tokens,
    )
    server, served = await _serve(settings)
    yield served
    await server.stop()


def client(
    pki: Pki, *, cert: tuple[Path, Path] | None = None, token: str | None = None, ca: Path | None = None
):
    return GrpcClientSettings(
        ca_file=ca or pki.ca,
        cert_file=cert[0] if cert else None,
        key_file=cert[1] if cert else None,
        token=token,
    )


async def promote(address: str, security: GrpcClientSettings | None) -> dpb.Rollout:
    async with open_channel(address, security=security) as channel:
        stub = deployer_pb2_grpc.DeployerStub(channel)
        return await stub.Promote(dpb.RolloutActionRequest(model="wine", actor="typed-by-caller"), timeout=10)


async def failed(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# --- tests ---------------------------------------------------------------------------------------


async def test_a_call_without_credentials_is_unauthenticated_with_what_to_do(pki, token_server):
    error = await failed(promote(token_server.address, client(pki)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == (NO_CREDENTIALS)
    assert token_server.core.calls == []


async def test_an_unknown_token_is_unauthenticated(pki, token_server):
    error = await failed(promote(token_server.address, client(pki, token="guessed")))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token is not known" in error.details()
    assert "guessed" not in error.details()


async def test_a_plaintext_client_cannot_talk_to_a_tls_server(token_server):
    error = await failed(promote(token_server.address, None))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert token_server.core.calls == []


async def test_a_viewer_token_may_read_but_not_promote(pki, token_server):
    viewer = client(pki, token=VIEWER_TOKEN)
    error = await failed(promote(token_server.address, viewer))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "user:alice (viewer) may not call Deployer/Promote: it needs operator"
    async with open_channel(token_server.address, security=viewer) as channel:
        await deployer_pb2_grpc.DeployerStub(channel).GetRollout(
            dpb.GetRolloutRequest(model="wine"), timeout=10
        )
    assert token_server.core.calls == [("get_rollout", Principal("user:alice", Role.VIEWER, "token"), "")]


async def test_an_operator_token_may_promote_and_the_handler_sees_who_it_is(pki, token_server):
    rollout = await promote(token_server.address, client(pki, token=OPERATOR_TOKEN))
    assert rollout.model == "wine"
    assert token_server.core.calls == [
        # the actor the caller typed is not believed: the core is handed the authenticated name
        ("promote", Principal("user:bob", Role.OPERATOR, "token"), "user:bob")
    ]


async def test_an_operator_certificate_may_promote_as_its_cn(pki, mtls_server):
    await promote(mtls_server.address, client(pki, cert=pki.operator))
    assert mtls_server.core.calls == [
        ("promote", Principal("user:olive", Role.OPERATOR, "certificate"), "user:olive")
    ]


async def test_a_viewer_certificate_and_a_service_certificate_may_not_promote(pki, mtls_server):
    error = await failed(promote(mtls_server.address, client(pki, cert=pki.viewer)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "user:vera (viewer) may not call Deployer/Promote: it needs operator"
    error = await failed(promote(mtls_server.address, client(pki, cert=pki.monitor)))
    assert error.details() == "svc:monitor (service) may not call Deployer/Promote: it needs operator"
    assert mtls_server.core.calls == []


async def test_a_token_on_a_certificate_acts_with_the_token_holders_rights(pki, mtls_server):
    error = await failed(promote(mtls_server.address, client(pki, cert=pki.operator, token=VIEWER_TOKEN)))
    assert error.details() == "user:alice (viewer) may not call Deployer/Promote: it needs operator"


async def test_a_certificate_from_another_ca_is_refused(pki, mtls_server):
    error = await failed(promote(mtls_server.address, client(pki, cert=pki.stranger)))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert mtls_server.core.calls == []


async def test_a_client_without_a_certificate_is_refused_by_mutual_tls(pki, mtls_server):
    error = await failed(promote(mtls_server.address, client(pki, token=OPERATOR_TOKEN)))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert mtls_server.core.calls == []


async def test_a_client_refuses_a_server_its_ca_did_not_sign(pki, token_server):
    error = await failed(promote(token_server.address, client(pki, token=OPERATOR_TOKEN, ca=pki.other_ca)))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert token_server.core.calls == []


async def test_health_checks_need_no_credentials(pki, token_server):
    async with open_channel(token_server.address, security=client(pki)) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def list_services(address: str, security: GrpcClientSettings) -> set[str]:
    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async with open_channel(address, security=security) as channel:
        async for reply in reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            requests(), timeout=10
        ):
            return {service.name for service in reply.list_services_response.service}
    return set()


async def test_streaming_calls_are_checked_too(pki, token_server):
    assert SERVICE_NAME in await list_services(token_server.address, client(pki, token=VIEWER_TOKEN))
    error = await failed(list_services(token_server.address, client(pki)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_server_key_that_is_not_its_certificates_is_refused_at_start(pki):
    settings = GrpcServerSettings(port=0, tls_cert=pki.server[0], tls_key=pki.operator[1])
    server = GrpcServer(settings)
    with pytest.raises(
        ValueError, match=r"MLOPS_GRPC_TLS_KEY .*olive\.key is not the key of MLOPS_GRPC_TLS_CERT"
    ):
        await server.start()


async def test_with_mutual_tls_on_its_port_a_server_takes_token_holders_on_its_token_port(pki):
    settings = GrpcServerSettings(
        port=0,
        tls_cert=pki.server[0],
        tls_key=pki.server[1],
        tls_client_ca=pki.ca,
        auth=True,
        token_file=pki.tokens,
        token_port=0,
    )
    server, served = await _serve(settings)
    try:
        tokens = f"127.0.0.1:{server.token_port}"
        assert server.token_port and server.token_port != server.port
        promoted = await promote(tokens, client(pki, token=OPERATOR_TOKEN))
        assert promoted.model == "wine" and served.core.calls[-1][1].name == "user:bob"
        by_certificate = await promote(served.address, client(pki, cert=pki.operator))
        assert by_certificate.model == "wine" and served.core.calls[-1][1].name == "user:olive"
        nobody = await failed(promote(tokens, client(pki)))
        assert nobody.code() == grpc.StatusCode.UNAUTHENTICATED
        # the token port asks for no certificate: one presented there proves nothing
        certificate_there = await failed(promote(tokens, client(pki, cert=pki.operator)))
        assert certificate_there.code() == grpc.StatusCode.UNAUTHENTICATED
        token_without_certificate = await failed(promote(served.address, client(pki, token=OPERATOR_TOKEN)))
        assert token_without_certificate.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop()
