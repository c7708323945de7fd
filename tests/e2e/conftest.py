"""End-to-end tests: the running platform (`make up`), driven only through its public surfaces:
the `mlops` CLI, Kafka topics, gRPC, Jaeger's API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import eventually, jaeger_url, kafka, stack, unique  # noqa: F401 - shared fixtures

ROOT = Path(__file__).resolve().parents[2]


def mlops(*args: str) -> dict | list:
    """Run the CLI with --json, as a script would; fail the test with its message on a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", "mlops.cli", "--json", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        # As a user runs it: the CLI names itself mlops-cli in traces.
        env={k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"},
        timeout=300,
    )
    assert result.returncode == 0, f"mlops {' '.join(args)} exited {result.returncode}: {result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture
def cli():
    return mlops


__all__ = ["eventually"]
