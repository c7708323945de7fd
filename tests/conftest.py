"""Shared test set-up: the environment the local stack writes, loaded before any test imports settings."""

from __future__ import annotations

import os
import shlex
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
        # as the shell reads it: stack.sh writes values with printf %q (a URL's ? and & escaped)
        os.environ.setdefault(name, "".join(shlex.split(value)))


def _secure_in_process_servers() -> None:
    """gRPC servers that tests start in their own process are secured as the stack's services are: TLS
    with a service certificate of the stack's CA, mutual TLS, every call authorised. The tests' clients
    are the operator (admin), from `.stack/env`."""
    pki = STACK_ENV.parent / "pki"
    if not (pki / "grpc" / "tokens").is_file():
        return
    for name, value in {
        "MLOPS_GRPC_TLS_CERT": pki / "grpc" / "registry.pem",
        "MLOPS_GRPC_TLS_KEY": pki / "grpc" / "registry.key",
        "MLOPS_GRPC_TLS_CLIENT_CA": pki / "ca.pem",
        "MLOPS_GRPC_AUTH": "true",
        "MLOPS_GRPC_TOKEN_FILE": pki / "grpc" / "tokens",
    }.items():
        os.environ.setdefault(name, str(value))


_load_stack_env()
_secure_in_process_servers()
os.environ.setdefault("OTEL_SERVICE_NAME", "mlops-tests")
os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "200")
