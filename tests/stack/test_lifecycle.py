"""`make up` twice and `make down` twice are harmless; the stack and services come back with their data.

Runs after the integration tests (it stops the stack in the middle) and leaves the stack up.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {path.parent.name for path in (ROOT / "services").glob("*/__main__.py")}
COMPONENTS = {"postgres", "kafka", "s3", "jaeger", "prometheus"} | SERVICES


def make(target: str) -> subprocess.CompletedProcess:
    """The very commands the README gives: `make up`, `make down`, `make status`."""
    return subprocess.run(
        ["make", "--no-print-directory", target], capture_output=True, text=True, timeout=600, cwd=ROOT
    )


def pids() -> dict[str, str]:
    status = make("status")
    return dict(re.findall(r"^(\w+)\s+ready\s+pid (\d+)", status.stdout, re.MULTILINE))


def still_running(pid: str) -> bool:
    """Whether a process exists and has not exited; an exited one waiting to be reaped (zombie) has stopped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def s3_client():
    import os

    import boto3

    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("MLOPS_ARTIFACT_S3_ENDPOINT_URL", "https://127.0.0.1:9000"),
        verify=os.environ.get("MLOPS_ARTIFACT_S3_CA_FILE") or None,
    )


def test_up_twice_then_down_twice_then_up():
    first = make("up")
    assert first.returncode == 0, first.stdout + first.stderr
    running = pids()
    marker = f"tests/lifecycle/{uuid.uuid4().hex}"
    s3_client().put_object(Bucket="mlops", Key=marker, Body=b"kept across down and up")
    assert set(running) == COMPONENTS, running

    second = make("up")
    assert second.returncode == 0, second.stdout + second.stderr
    assert pids() == running, "a second `up` must not restart anything"

    for _ in range(2):
        down = make("down")
        assert down.returncode == 0, down.stdout + down.stderr
        status = make("status")
        assert status.returncode != 0, "status must fail while the stack is down"
        assert pids() == {}
        for name, pid in running.items():
            assert not still_running(pid), f"{name} (pid {pid}) survived `down`"

    again = make("up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(pids()) == COMPONENTS
    assert make("status").returncode == 0
    body = s3_client().get_object(Bucket="mlops", Key=marker)["Body"].read()
    assert body == b"kept across down and up", "`down` keeps the data"
