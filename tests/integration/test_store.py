"""The artifact store against the real S3-compatible server of the local stack, and on local disk."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import boto3
import pytest

from mlops.errors import IntegrityError, InvalidArgument, NotFound, PermissionDenied
from mlops.outages import is_outage
from mlops.settings import ArtifactSettings
from mlops.store import FileStore, S3Store, open_store


@pytest.fixture(params=["s3", "file"])
def store(request, tmp_path):
    if request.param == "s3":
        settings = ArtifactSettings(
            root=f"s3://{os.environ.get('MLOPS_S3_BUCKET', 'mlops')}/tests",
            s3_endpoint_url=os.environ.get("MLOPS_ARTIFACT_S3_ENDPOINT_URL", "https://127.0.0.1:9000"),
        )
    else:
        settings = ArtifactSettings(root=(tmp_path / "artifacts").as_uri())
    return open_store(settings)


def tamper(store, uri: str, data: bytes) -> None:
    """Replace an object's bytes behind the store's back, as a faulty disk or a careless user would."""
    if isinstance(store, S3Store):
        key = uri.removeprefix(f"s3://{store.bucket}/")
        store.client.put_object(Bucket=store.bucket, Key=key, Body=data)
    else:
        path = Path(uri.removeprefix("file://"))
        path.chmod(0o644)
        path.write_bytes(data)


async def test_content_addressed_round_trip(store, unique):
    data = f"sepal,petal\n{unique},1\n".encode()
    ref = await store.put_bytes(f"datasets/{unique}", "data.csv", data)
    sha = hashlib.sha256(data).hexdigest()
    assert ref.sha256 == sha and ref.size == len(data)
    assert ref.uri.endswith(f"datasets/{unique}/{sha}/data.csv")
    assert await store.exists(ref.uri)
    assert await store.get_bytes(ref.uri) == data
    assert await store.get_bytes(ref.uri, sha) == data
    again = await store.put_bytes(f"datasets/{unique}", "data.csv", data)
    assert again == ref, "the same bytes get the same address"


async def test_changed_bytes_are_refused_on_read(store, unique, tmp_path):
    ref = await store.put_bytes(f"models/{unique}", "model.onnx", b"the real model")
    tamper(store, ref.uri, b"a different model")
    with pytest.raises(IntegrityError, match="refusing to use it") as caught:
        await store.get_bytes(ref.uri)
    assert ref.sha256 in str(caught.value)
    dest = tmp_path / "download" / "model.onnx"
    with pytest.raises(IntegrityError):
        await store.get_file(ref.uri, dest)
    assert not dest.exists(), "a corrupt download never reaches its destination"
    assert list(dest.parent.iterdir()) == [], "no temporary file is left behind"


async def test_a_wrong_expected_checksum_is_refused(store, unique):
    ref = await store.put_bytes(f"models/{unique}", "model.onnx", b"bytes")
    with pytest.raises(IntegrityError):
        await store.get_bytes(ref.uri, "0" * 64)


async def test_large_file_streams_up_and_down_verified(store, unique, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    seen = []
    ref = await store.put_file(f"datasets/{unique}", "big.bin", source, progress=seen.append)
    assert sum(seen) == source.stat().st_size
    dest = tmp_path / "out" / "big.bin"
    await store.get_file(ref.uri, dest)
    assert dest.read_bytes() == source.read_bytes()


async def test_missing_objects_and_bad_names(store, unique):
    missing = store.uri_for(f"models/{unique}/{'d' * 64}/model.onnx")
    assert not await store.exists(missing)
    with pytest.raises(NotFound):
        await store.get_bytes(missing)
    with pytest.raises(InvalidArgument, match="not allowed"):
        await store.put_bytes("models/../etc", "passwd", b"x")


def test_open_store_picks_the_backend_by_scheme(tmp_path):
    assert isinstance(open_store(ArtifactSettings(root=tmp_path.as_uri())), FileStore)
    assert isinstance(open_store(ArtifactSettings(root="s3://bucket/prefix")), S3Store)
    with pytest.raises(InvalidArgument, match="supported: file, s3"):
        open_store(ArtifactSettings(root="gs://bucket"))


def test_the_local_bucket_exists():
    client = boto3.client(
        "s3",
        endpoint_url=os.environ.get("MLOPS_ARTIFACT_S3_ENDPOINT_URL", "https://127.0.0.1:9000"),
        verify=os.environ.get("MLOPS_ARTIFACT_S3_CA_FILE") or None,
    )
    names = [bucket["Name"] for bucket in client.list_buckets()["Buckets"]]
    assert os.environ.get("MLOPS_S3_BUCKET", "mlops") in names


async def test_multipart_upload_above_the_threshold_is_verified_on_the_way_back(unique, tmp_path):
    store = open_store(
        ArtifactSettings(
            root="s3://mlops/tests",
            multipart_threshold_mb=5,
            s3_endpoint_url=os.environ.get("MLOPS_ARTIFACT_S3_ENDPOINT_URL", "https://127.0.0.1:9000"),
        )
    )
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(11 * 1024 * 1024))
    seen = []
    ref = await store.put_file(f"datasets/{unique}", "big.bin", source, progress=seen.append)
    assert sum(seen) == source.stat().st_size and len(seen) > 1, "progress arrives part by part"
    dest = tmp_path / "back.bin"
    await store.get_file(ref.uri, dest)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == ref.sha256


async def test_a_wrong_secret_key_is_refused_for_good_and_promptly(monkeypatch, unique):
    """403 from the real server: PermissionDenied at once, not an outage to wait out."""
    endpoint = os.environ.get("MLOPS_ARTIFACT_S3_ENDPOINT_URL", "https://127.0.0.1:9000")
    good = open_store(ArtifactSettings(root="s3://mlops/tests", s3_endpoint_url=endpoint))
    ref = await good.put_bytes(f"datasets/{unique}", "data.csv", b"a,b\n1,2\n")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-" + unique)
    wrong = open_store(ArtifactSettings(root="s3://mlops/tests", s3_endpoint_url=endpoint))
    started = time.monotonic()
    with pytest.raises(PermissionDenied) as caught:
        await wrong.get_bytes(ref.uri)
    with pytest.raises(PermissionDenied), wrong.open_stream(ref.uri):
        pass
    with pytest.raises(PermissionDenied):
        await wrong.put_bytes(f"datasets/{unique}", "other.csv", b"c\n3\n")
    elapsed = time.monotonic() - started
    print(f"\nwrong secret: {caught.value.message} ({elapsed:.2f} s for three calls)")
    assert "SignatureDoesNotMatch" in caught.value.message or "InvalidAccessKeyId" in caught.value.message
    assert not is_outage(caught.value) and not caught.value.retryable
    assert elapsed < 5, f"a refusal must not be retried like an outage ({elapsed:.1f} s)"
