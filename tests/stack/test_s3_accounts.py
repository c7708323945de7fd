"""S3 on the running local stack: an account per service, held by the bucket's policy to the prefixes
and operations it needs (infra/local/components/s3.sh, infra/local/s3_accounts.py).

Every object a test makes is named after the test's unique id and deleted again by the operator (the
root key, which the policy does not bind). The two tests that run `stack.sh up s3` do what `make up`
does: one removes an account the table does not name and restores a tampered one (the deployer's,
which reads nothing), the other restarts a server started without the internal IAM.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from mlops.errors import NotFound, PermissionDenied
from mlops.settings import ArtifactSettings
from mlops.store import open_store
from services.registry.datasets import DatasetChecker

ROOT = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("MLOPS_STACK_DIR", ROOT / ".stack"))
PKI = STACK / "pki"
BUCKET = os.environ.get("MLOPS_ARTIFACT_ROOT", "s3://mlops").removeprefix("s3://").split("/")[0]
ENDPOINT = os.environ.get("MLOPS_ARTIFACT_S3_ENDPOINT_URL", "https://127.0.0.1:9000")
CA = (
    os.environ.get("MLOPS_ARTIFACT_S3_CA_FILE") or None
)  # the stack's CA, which signed the server's certificate
SERVICES = sorted(path.parent.name for path in (ROOT / "services").glob("*/__main__.py"))
# the operator's (root) keys from <stack>/env, read before any test puts a service's in the environment
OPERATOR = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])

# What each service touches in the bucket, read off its code: r = reads, w = writes.
NEEDS = {
    # checks each committed data set; stores models registered from outside and runs' files, serves them
    "registry": {"datasets": "r", "models": "rw", "runs": "rw"},
    "trainer": {"datasets": "r", "models": "w"},  # trains on a data set, writes model and profile
    "evaluator": {"datasets": "r", "models": "r"},  # scores models on the held-out split
    "inference": {"models": "r"},  # serves models
    "monitor": {"datasets": "rw", "models": "r"},  # profiles, parent data set; assembles data sets
    "deployer": {},  # no artifact
    "console": {},  # reads through the services' APIs
}
PREFIXES = ("datasets", "models", "runs", "tests")  # tests/: a prefix no service may touch


def _load_s3_accounts():
    spec = importlib.util.spec_from_file_location("s3_accounts", ROOT / "infra" / "local" / "s3_accounts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


s3_accounts = _load_s3_accounts()


def credentials(service: str) -> dict[str, str]:
    lines = (PKI / "s3" / f"{service}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def client(access: str, secret: str):
    return boto3.session.Session().client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        verify=CA,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )


def service_client(service: str):
    keys = credentials(service)
    return client(keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"])


def operator():
    return client(*OPERATOR)


def admin():
    return s3_accounts.Admin(ENDPOINT, "us-east-1", *OPERATOR, CA)


def error_code(call) -> str | None:
    """None when the call succeeds, else the S3 error code it was refused with."""
    try:
        call()
    except ClientError as error:
        return error.response["Error"]["Code"]
    return None


def up_s3() -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "infra/local/stack.sh", "up", "s3"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def objects(unique: str) -> Iterator[dict[str, str]]:
    """One object under each prefix, by prefix; they and whatever the test writes beside them go after."""
    root = operator()
    keys = {prefix: f"{prefix}/tests-s3-accounts-{unique}/{'0' * 64}/data.csv" for prefix in PREFIXES}
    for key in keys.values():
        root.put_object(Bucket=BUCKET, Key=key, Body=b"x,y\n1,2\n")
    yield keys
    for prefix in PREFIXES:
        listed = root.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/tests-s3-accounts-{unique}/")
        for item in listed.get("Contents", []):
            root.delete_object(Bucket=BUCKET, Key=item["Key"])


def test_the_table_gives_each_service_what_its_code_needs_and_no_more():
    table = s3_accounts.ACCOUNTS
    assert set(table) == set(SERVICES) == set(NEEDS)
    for service, needs in NEEDS.items():
        granted = {prefix: set(actions) for prefix, actions in table[service].items()}
        wanted = {
            prefix: ({"s3:GetObject"} if "r" in how else set())
            | ({"s3:PutObject", "s3:AbortMultipartUpload"} if "w" in how else set())
            for prefix, how in needs.items()
        }
        assert granted == wanted, service


def test_the_files_are_private_and_each_service_has_a_key_of_its_own():
    folder = PKI / "s3"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert private(PKI / "s3-users.json")
    secrets = json.loads((PKI / "s3-users.json").read_text())
    seen = set()
    for service in SERVICES:
        path = folder / f"{service}.env"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        keys = credentials(service)
        assert keys == {"AWS_ACCESS_KEY_ID": service, "AWS_SECRET_ACCESS_KEY": secrets[service]}
        assert len(secrets[service]) >= 32 and secrets[service] not in seen
        seen.add(secrets[service])
    assert OPERATOR[1] not in seen, "a service holds the operator's key"
    assert sorted(p.stem for p in folder.glob("*.env")) == SERVICES
    assert stat.S_IMODE((STACK / "s3" / "iam").stat().st_mode) == 0o700
    assert private(STACK / "s3" / "iam" / "users.json")


def test_each_service_reads_and_writes_exactly_what_it_needs(objects: dict[str, str], unique: str):
    for service in SERVICES:
        s3 = service_client(service)
        for prefix in PREFIXES:
            how = NEEDS[service].get(prefix, "")
            key = objects[prefix]
            fresh = f"{prefix}/tests-s3-accounts-{unique}/{service}/{'1' * 64}/data.csv"
            missing = f"{prefix}/tests-s3-accounts-{unique}/{'2' * 64}/absent.csv"
            where = f"{service} on {prefix}/"
            get = error_code(lambda s3=s3, key=key: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            assert get == (None if "r" in how else "AccessDenied"), where
            head = error_code(lambda s3=s3, key=key: s3.head_object(Bucket=BUCKET, Key=key))
            assert head == (None if "r" in how else "403"), where
            # a reader learns that a key is missing (the store's NotFound), not that it is refused
            absent = error_code(lambda s3=s3, key=missing: s3.get_object(Bucket=BUCKET, Key=key))
            assert absent == ("NoSuchKey" if "r" in how else "AccessDenied"), where
            put = error_code(lambda s3=s3, key=fresh: s3.put_object(Bucket=BUCKET, Key=key, Body=b"new"))
            assert put == (None if "w" in how else "AccessDenied"), where
            delete = error_code(lambda s3=s3, key=key: s3.delete_object(Bucket=BUCKET, Key=key))
            assert delete == "AccessDenied", where
            copy = error_code(
                lambda s3=s3, fresh=fresh: s3.copy_object(
                    Bucket=BUCKET, Key=fresh + ".copy", CopySource={"Bucket": BUCKET, "Key": objects["tests"]}
                )
            )
            assert copy == "AccessDenied", where
        # nothing on the bucket itself
        assert error_code(lambda s3=s3: s3.list_objects_v2(Bucket=BUCKET)) == "AccessDenied", service
        assert error_code(lambda s3=s3: s3.get_bucket_policy(Bucket=BUCKET)) == "AccessDenied", service
        policy = json.dumps({"Version": "2012-10-17", "Statement": []})
        refused = error_code(lambda s3=s3, policy=policy: s3.put_bucket_policy(Bucket=BUCKET, Policy=policy))
        assert refused == "AccessDenied", service
        assert error_code(lambda s3=s3: s3.create_bucket(Bucket=f"tests-{unique}")) == "AccessDenied", service
    # the objects the services could not delete are all still there
    root = operator()
    for key in objects.values():
        assert root.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"x,y\n1,2\n"


def test_a_writer_completes_and_aborts_multipart_uploads_under_its_prefix(unique: str):
    s3 = service_client("trainer")
    key = f"models/tests-s3-accounts-{unique}/{'3' * 64}/model.onnx"
    try:
        upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        part = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"onnx")
        s3.complete_multipart_upload(
            Bucket=BUCKET,
            Key=key,
            UploadId=upload,
            MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
        )
        aborted = s3.create_multipart_upload(Bucket=BUCKET, Key=key + ".2")["UploadId"]
        s3.abort_multipart_upload(Bucket=BUCKET, Key=key + ".2", UploadId=aborted)
        elsewhere = f"datasets/tests-s3-accounts-{unique}/{'3' * 64}/data.csv"
        assert error_code(lambda: s3.create_multipart_upload(Bucket=BUCKET, Key=elsewhere)) == "AccessDenied"
        assert operator().get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"onnx"
    finally:
        operator().delete_object(Bucket=BUCKET, Key=key)


@pytest.fixture
def as_service(monkeypatch: pytest.MonkeyPatch):
    """The artifact store as a service opens it, with that service's keys in its environment."""

    def store(service: str):
        for name, value in credentials(service).items():
            monkeypatch.setenv(name, value)
        return open_store(ArtifactSettings())

    return store


async def test_the_services_store_calls_work_with_their_own_keys(as_service, unique: str):
    data = b"a,b,label\n1,2,x\n3,4,y\n"
    sha = hashlib.sha256(data).hexdigest()
    name = f"tests-s3-accounts-{unique}"
    dataset = await as_service("monitor").put_bytes(f"datasets/{name}", "data.csv", data)  # assembled
    try:
        facts = await DatasetChecker(as_service("registry")).check(dataset.uri, sha, "csv")
        assert facts.row_count == 2
        trainer = as_service("trainer")
        assert await trainer.get_bytes(dataset.uri, sha) == data
        model = await trainer.put_bytes(f"models/{name}", "model.onnx", b"onnx bytes")
        profile = await trainer.put_bytes(f"models/{name}", "profile.json", b"{}")
        evaluator = as_service("evaluator")
        assert await evaluator.get_bytes(model.uri, model.sha256) == b"onnx bytes"
        assert await evaluator.get_bytes(dataset.uri, sha) == data
        assert await as_service("inference").get_bytes(model.uri, model.sha256) == b"onnx bytes"
        monitor = as_service("monitor")
        assert await monitor.get_bytes(profile.uri, profile.sha256) == b"{}"
        assert await monitor.get_bytes(dataset.uri, sha) == data
        # a missing object under a readable prefix is NotFound, as before
        with pytest.raises(NotFound):
            await as_service("inference").get_bytes(model.uri.replace(model.sha256, "4" * 64))
        assert not await as_service("inference").exists(model.uri.replace(model.sha256, "4" * 64))
        # and what the table does not give is refused for good (consumers dead-letter it)
        refusals = [
            lambda: as_service("registry").put_bytes(f"datasets/{name}", "data.csv", b"forged"),
            lambda: as_service("inference").get_bytes(dataset.uri, sha),
            lambda: as_service("inference").put_bytes(f"models/{name}", "model.onnx", b"forged"),
            lambda: as_service("trainer").put_bytes(f"datasets/{name}", "data.csv", b"forged"),
            lambda: as_service("monitor").put_bytes(f"models/{name}", "model.onnx", b"forged"),
            lambda: as_service("evaluator").put_bytes(f"models/{name}", "model.onnx", b"forged"),
            lambda: as_service("deployer").get_bytes(model.uri, model.sha256),
        ]
        for refused in refusals:
            with pytest.raises(PermissionDenied, match="AccessDenied"):
                await refused()
    finally:
        root = operator()
        for prefix in ("datasets", "models"):
            listed = root.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/{name}/")
            for item in listed.get("Contents", []):
                root.delete_object(Bucket=BUCKET, Key=item["Key"])


def test_a_service_key_is_no_admin_and_a_wrong_secret_is_refused():
    keys = credentials("trainer")
    trainer_admin = s3_accounts.Admin(
        ENDPOINT, "us-east-1", keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"], CA
    )
    with pytest.raises(s3_accounts.Refused, match="HTTP 403"):
        trainer_admin.users()
    wrong = client("trainer", keys["AWS_SECRET_ACCESS_KEY"][::-1])
    assert error_code(lambda: wrong.list_buckets()) == "SignatureDoesNotMatch"
    assert error_code(lambda: client("nobody", "x" * 40).list_buckets()) == "InvalidAccessKeyId"


def test_up_deletes_an_account_the_table_does_not_name_and_restores_a_tampered_one(unique: str):
    accounts = admin()
    stray = f"tests-{unique}"
    accounts.create(stray, "s" * 40, "user")
    accounts.update("deployer", "t" * 40, "userplus")  # the deployer reads no artifact: safe to tamper with
    try:
        assert error_code(lambda: client(stray, "s" * 40).list_buckets()) is None
        assert error_code(lambda: service_client("deployer").list_buckets()) == "SignatureDoesNotMatch"
    finally:
        up = up_s3()
    assert up.returncode == 0, up.stdout + up.stderr
    assert re.search(r"^s3\s+already running", up.stdout, re.MULTILINE), up.stdout
    assert error_code(lambda: client(stray, "s" * 40).list_buckets()) == "InvalidAccessKeyId"
    assert error_code(lambda: service_client("deployer").list_buckets()) is None
    assert accounts.users()["deployer"][1] == "user"
    assert set(accounts.users()) == set(SERVICES)


def test_up_restarts_a_server_started_without_the_internal_iam(objects: dict[str, str]):
    """An older stack's server: no record of the options it was started with."""
    options = STACK / "run" / "s3.options"
    assert "iam-dir" in options.read_text()
    options.unlink()
    up = up_s3()
    assert up.returncode == 0, up.stdout + up.stderr
    assert re.search(r"s3\s+configuration changed \(internal IAM.*restarting", up.stdout), up.stdout
    assert "iam-dir" in options.read_text()
    # data and accounts kept across the restart
    assert service_client("inference").get_object(Bucket=BUCKET, Key=objects["models"])["Body"].read()
    again = up_s3()
    assert again.returncode == 0 and re.search(r"^s3\s+already running", again.stdout, re.MULTILINE), (
        again.stdout + again.stderr
    )
