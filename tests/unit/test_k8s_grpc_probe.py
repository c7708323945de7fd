"""infra/k8s/base/grpc_probe.py, the services' Kubernetes probe, run as kubelet runs it (a process of its
own) against a real gRPC server of the platform on 127.0.0.1: TLS, mutual TLS, health SERVING or not,
the wrong CA, and a certificate renewed on disk while the server still serves the old one."""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mlops.grpc import GrpcServer
from mlops.settings import GrpcServerSettings

PROBE = Path(__file__).resolve().parents[2] / "infra/k8s/base/grpc_probe.py"


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

    def secret(self, directory: Path, service: str) -> Path:
        """What cert-manager puts in mlops-<service>-tls, as the kubelet mounts it: tls.crt, tls.key, ca.crt."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"svc:{service}"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "service"),
            ]
        )
        cert = (
            _builder(subject, self.cert.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(service), x509.DNSName(f"{service}.mlops.svc")]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / "tls.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (directory / "ca.crt").write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return directory


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def probe(*args: object) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROBE),
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    return process.returncode, err.decode()


async def serve(tls: Path, *, mutual: bool = True) -> GrpcServer:
    tokens = tls.parent / "tokens"
    tokens.write_text("# no people\n")
    settings = GrpcServerSettings(
        host="127.0.0.1",
        port=free_port(),
        tls_cert=tls / "tls.crt",
        tls_key=tls / "tls.key",
        tls_client_ca=tls / "ca.crt" if mutual else None,
        auth=True,
        token_file=tokens,
        token_port=None,
        shutdown_grace_s=0,
    )
    server = GrpcServer(settings)
    await server.start()
    return server


async def test_serving_over_mutual_tls_passes_and_not_serving_fails(tmp_path: Path) -> None:
    tls = Authority.create("mlops gRPC CA").secret(tmp_path / "grpc-tls", "registry")
    server = await serve(tls)
    try:
        code, err = await probe(server.port, "registry", "--tls-dir", tls)
        assert code == 1 and "NOT_SERVING" in err, err  # started, not yet ready
        await server.set_serving()
        assert await probe(server.port, "registry", "--tls-dir", tls) == (0, "")
        assert await probe(server.port, "registry", "--fresh", 3600, "--tls-dir", tls) == (0, "")
        code, err = await probe(server.port, "monitor", "--tls-dir", tls)
        assert code == 1, "a name the certificate does not carry must fail the handshake"
    finally:
        await server.stop()
    code, err = await probe(server.port, "registry", "--tls-dir", tls)
    assert code == 1 and "UNAVAILABLE" in err, err


async def test_tls_without_client_certificates_passes(tmp_path: Path) -> None:
    """The inference server: TLS, tokens only; the probe's certificate is not asked for."""
    tls = Authority.create("mlops gRPC CA").secret(tmp_path / "grpc-tls", "inference")
    server = await serve(tls, mutual=False)
    try:
        await server.set_serving()
        assert await probe(server.port, "inference", "--tls-dir", tls) == (0, "")
    finally:
        await server.stop()


async def test_a_server_of_another_ca_fails(tmp_path: Path) -> None:
    tls = Authority.create("mlops gRPC CA").secret(tmp_path / "grpc-tls", "registry")
    other = Authority.create("someone else's CA").secret(tmp_path / "other", "registry")
    server = await serve(tls)
    try:
        await server.set_serving()
        code, err = await probe(server.port, "registry", "--tls-dir", other)
        assert code == 1 and "UNAVAILABLE" in err, err
    finally:
        await server.stop()


async def test_fresh_fails_once_the_mounted_certificate_was_renewed(tmp_path: Path) -> None:
    ca = Authority.create("mlops gRPC CA")
    tls = ca.secret(tmp_path / "grpc-tls", "registry")
    server = await serve(tls)
    try:
        await server.set_serving()
        renewed = ca.secret(tmp_path / "renewed", "registry")
        for name in ("tls.crt", "tls.key"):
            shutil.copy(renewed / name, tls / name)
        # readiness (no --fresh) still passes: the old certificate is valid and verifies
        assert await probe(server.port, "registry", "--tls-dir", tls) == (0, "")
        code, err = await probe(server.port, "registry", "--fresh", 0, "--tls-dir", tls)
        assert code == 1 and "renewed" in err, err
        # within the stagger window the pod waits its turn; after it, it restarts
        now = time.time()
        os.utime(tls / "tls.crt", (now, now))
        assert await probe(server.port, "registry", "--fresh", 10**9, "--tls-dir", tls) == (0, "")
        os.utime(tls / "tls.crt", (now - 7200, now - 7200))
        code, err = await probe(server.port, "registry", "--fresh", 3600, "--tls-dir", tls)
        assert code == 1 and "renewed" in err, err
    finally:
        await server.stop()


@pytest.mark.parametrize("missing", ["ca.crt", "tls.key"])
async def test_missing_mounted_files_fail_with_a_line(tmp_path: Path, missing: str) -> None:
    tls = Authority.create("mlops gRPC CA").secret(tmp_path / "grpc-tls", "registry")
    (tls / missing).unlink()
    code, err = await probe(free_port(), "registry", "--tls-dir", tls)
    assert code == 1 and missing in err and "Traceback" not in err, err
