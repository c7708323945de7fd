"""The CLI finds the platform in its context file: from a shell with no variable set, `mlops data
commit` uploads where the services read (the stack's S3, not a file:// default) and the running
registry records the version. `mlops context show` never prints a secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from mlops.grpc import open_sync_channel
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from tests.integration.conftest import eventually

ROOT = Path(__file__).resolve().parents[2]


def mlops(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlops.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


@pytest.fixture
def plain_shell(tmp_path) -> dict[str, str]:
    """A shell that knows nothing of the platform but where its configuration file is."""
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MLOPS_CONFIG": str(tmp_path / "config.yaml")}


async def test_a_plain_shell_commits_data_the_services_can_read_through_the_context(plain_shell, tmp_path):
    recorded = mlops("context", "set", "local", "--from-env", "--use", env={**os.environ, **plain_shell})
    assert recorded.returncode == 0, recorded.stderr
    assert (os.stat(plain_shell["MLOPS_CONFIG"]).st_mode & 0o777) == 0o600, "it holds credentials"

    dataset = f"ctx-{uuid.uuid4().hex[:10]}"
    path = tmp_path / "data.csv"
    path.write_text("a,b,target\n1,2,0\n3,4,1\n5,6,0\n")
    committed = mlops("--json", "data", "commit", str(path), "--dataset", dataset, env=plain_shell)
    assert committed.returncode == 0, committed.stderr

    with open_sync_channel("127.0.0.1:50051") as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)

        async def version():
            return stub.GetDatasetVersion(pb.GetDatasetVersionRequest(dataset=dataset), timeout=5)

        found = await eventually(version, timeout_s=60, what="the running registry recording the commit")
    assert found.uri.startswith("s3://"), f"uploaded to {found.uri}, not where the services read"
    assert found.row_count == 3


def test_show_list_and_use_never_print_a_secret(plain_shell):
    secret = f"s3cret-{uuid.uuid4().hex}"
    password = f"pw-{uuid.uuid4().hex}"
    env = {**plain_shell}
    for args in (
        (
            "context",
            "set",
            "dev",
            "--set",
            f"AWS_SECRET_ACCESS_KEY={secret}",
            "--set",
            f"MLOPS_DATABASE_URL=postgresql+asyncpg://mlops:{password}@db:5432/mlops",
            "--set",
            "MLOPS_REGISTRY_ADDR=registry.dev:50051",
        ),
        ("context", "set", "prod", "--set", "MLOPS_REGISTRY_ADDR=registry.prod:50051"),
        ("context", "use", "prod"),
    ):
        result = mlops(*args, env=env)
        assert result.returncode == 0, result.stderr
    listed = mlops("context", "list", env=env)
    assert "* prod" in listed.stdout and "  dev" in listed.stdout
    shown = mlops("--json", "context", "show", "dev", env=env)
    assert shown.returncode == 0, shown.stderr
    settings = json.loads(shown.stdout)["settings"]
    assert settings["AWS_SECRET_ACCESS_KEY"] == "<secret>"
    assert settings["MLOPS_DATABASE_URL"] == "postgresql+asyncpg://mlops:<secret>@db:5432/mlops"
    assert secret not in shown.stdout + shown.stderr and password not in shown.stdout + shown.stderr
    missing = mlops("context", "use", "nowhere", env=env)
    assert missing.returncode == 3 and "no context named 'nowhere' (known: dev, prod)" in missing.stderr
    refused = mlops("context", "set", "x", "--set", "PATH=/tmp", env=env)
    assert refused.returncode == 2 and "MLOPS_*" in refused.stderr
