"""S3 on the running local stack speaks TLS only, with the stack's certificate (infra/local/pki.py: s3.pem),
which clients verify against the stack's CA (MLOPS_ARTIFACT_S3_CA_FILE, <stack>/clients/ca.pem).

Every object a test makes is named after the test's unique id and deleted again. The last test runs
`stack.sh up s3` on a server recorded as started without TLS (an older stack's), as `make up` would.
"""

from __future__ import annotations

import io
import os
import re
import socket
import ssl
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, SSLError
from cryptography import x509

from mlops.errors import MlopsError
from mlops.settings import ArtifactSettings
from mlops.store import open_store

ROOT = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("MLOPS_STACK_DIR", ROOT / ".stack"))
ENDPOINT = os.environ.get("MLOPS_ARTIFACT_S3_ENDPOINT_URL", "https://127.0.0.1:9000")
CA = os.environ.get("MLOPS_ARTIFACT_S3_CA_FILE", str(STACK / "clients" / "ca.pem"))
PORT = urlsplit(ENDPOINT).port
BUCKET = os.environ.get("MLOPS_ARTIFACT_ROOT", "s3://mlops").removeprefix("s3://").split("/")[0]


def client(endpoint: str, verify: str | None):
    """As the operator (the root key in <stack>/env); no retries, so that a refusal shows at once."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        verify=verify,
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
    )


@pytest.fixture
def no_ca_from_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore would also take a CA bundle from these: the tests below mean to give none."""
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_the_environment_names_https_and_the_stacks_ca():
    assert ENDPOINT.startswith("https://"), ENDPOINT
    assert Path(CA).read_bytes() == (STACK / "pki" / "ca.pem").read_bytes()


def test_the_server_presents_the_stacks_certificate_for_its_addresses():
    context = ssl.create_default_context(cafile=CA)
    for host in ("127.0.0.1", "localhost"):  # hostname checked against the certificate's names
        with (
            socket.create_connection(("127.0.0.1", PORT), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    assert served == x509.load_pem_x509_certificate((STACK / "pki" / "s3.pem").read_bytes())


def test_a_plain_http_client_is_refused():
    with pytest.raises(ConnectionClosedError):
        client(f"http://127.0.0.1:{PORT}", None).list_buckets()
    # nor does the server answer a bare request in the clear
    with socket.create_connection(("127.0.0.1", PORT), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = raw.recv(4096)
    assert b"ListAllMyBucketsResult" not in answer and b"AccessDenied" not in answer, answer


async def test_an_https_client_without_the_ca_fails_verification(no_ca_from_elsewhere, monkeypatch):
    with pytest.raises(SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        client(ENDPOINT, None).list_buckets()  # the system's CAs (certifi's)
    with pytest.raises(SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        client(ENDPOINT, str(STACK / "pki" / "s3.pem")).list_buckets()  # a certificate is no CA
    # the store as a service without MLOPS_ARTIFACT_S3_CA_FILE opens it
    monkeypatch.delenv("MLOPS_ARTIFACT_S3_CA_FILE", raising=False)
    store = open_store(ArtifactSettings())
    with pytest.raises(MlopsError, match="CERTIFICATE_VERIFY_FAILED"):
        await store.exists(store.uri_for(f"tests/{uuid.uuid4().hex}/{'0' * 64}/absent"))


async def test_the_store_works_with_the_ca(no_ca_from_elsewhere):
    settings = ArtifactSettings()
    assert settings.s3_ca_file == Path(CA)
    store = open_store(settings)
    unique = uuid.uuid4().hex[:12]
    data = b"a,b\n1,2\n" + unique.encode()
    ref = await store.put_bytes(f"tests/s3-tls-{unique}", "data.csv", data)
    try:
        assert ref.uri.startswith(f"s3://{BUCKET}/")
        assert await store.exists(ref.uri)
        assert await store.get_bytes(ref.uri, ref.sha256) == data
    finally:
        key = ref.uri.removeprefix(f"s3://{BUCKET}/")
        client(ENDPOINT, CA).delete_object(Bucket=BUCKET, Key=key)
    assert not await store.exists(ref.uri)


def test_a_refused_write_is_answered_as_refused_over_tls():
    """versitygw answers a PUT the policy refuses before reading its body and closes the connection;
    the client must read that 403 (mlops.store.s3 mends CPython's report of the failed write), not take
    it for a dropped connection, an outage that consumers would wait out instead of dead-lettering."""
    keys = dict(line.split("=", 1) for line in (STACK / "pki" / "s3" / "inference.env").read_text().split())
    inference = boto3.session.Session().client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        verify=CA,
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )
    key = f"models/tests-s3-tls-{uuid.uuid4().hex[:12]}/{'5' * 64}/model.onnx"
    for body in (b"forged", b"f" * (3 << 20), io.BytesIO(b"f" * (1 << 20))):
        for _ in range(5):
            with pytest.raises(ClientError) as refused:
                inference.put_object(Bucket=BUCKET, Key=key, Body=body)
            assert refused.value.response["Error"]["Code"] == "AccessDenied"
            if isinstance(body, io.BytesIO):
                body.seek(0)


def test_up_restarts_a_server_recorded_as_started_without_tls():
    """An older stack's server: its options say internal IAM, nothing of TLS."""
    options = STACK / "run" / "s3.options"
    before = options.read_text()
    assert " tls " in before
    options.write_text(f"iam-dir {STACK / 's3' / 'iam'}\n")
    up = subprocess.run(
        ["bash", "infra/local/stack.sh", "up", "s3"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert up.returncode == 0, up.stdout + up.stderr
    assert re.search(
        r"s3\s+configuration changed \(TLS with the stack's certificate\): restarting", up.stdout
    ), up.stdout
    assert options.read_text() == before
    assert BUCKET in [b["Name"] for b in client(ENDPOINT, CA).list_buckets()["Buckets"]]
