"""Shared test set-up: the environment the local stack writes, loaded before any test imports settings."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STACK_ENV = Path(os.environ.get("MLOPS_STACK_DIR", ROOT / ".stack")) / "env"


def _load_stack_env() -> None:
    """Adopt `.stack/env` (written by `infra/local/stack.sh up`) unless a variable is already set."""
    if not STACK_ENV.exists():
        return
    for line in STACK_ENV.read_text().splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export ") :]
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        os.environ.setdefault(name, value.strip().strip("'\""))


_load_stack_env()
os.environ.setdefault("OTEL_SERVICE_NAME", "mlops-tests")
os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "200")
