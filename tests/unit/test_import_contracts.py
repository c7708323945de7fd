"""The transport boundary the build enforces (pyproject.toml, [tool.importlinter]): cores import neither
grpc, aiokafka nor mlops.bus; no service imports another; the libraries import no service.

The contracts are checked over this tree by the same `lint-imports` that `make lint` runs, and shown to
fail on a throw-away tree that breaks each kind of contract, checked with the same settings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS = {contract["id"]: contract for contract in CONFIG["contracts"]}
SERVICES = sorted(path.name for path in (REPO / "services").iterdir() if (path / "__init__.py").is_file())


def lint_imports(cwd: Path, *paths: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` as `make lint` runs it, in a fresh interpreter that finds the root packages in
    `paths` (or `cwd`) before anything installed."""
    search = [str(path) for path in paths or (cwd,)]
    if os.environ.get("PYTHONPATH"):
        search.append(os.environ["PYTHONPATH"])
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
            "--no-cache",
            "--no-logo",
        ],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(search)},
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_this_tree_keeps_every_import_contract() -> None:
    result = lint_imports(REPO, REPO / "libs", REPO)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in report, report


def test_every_service_has_a_core_contract_against_grpc_aiokafka_and_the_bus() -> None:
    assert SERVICES, "no service found under services/"
    for name in SERVICES:
        contract = CONTRACTS.get(f"{name}-core")
        assert contract is not None, f"services/{name} has no '{name}-core' contract in pyproject.toml"
        assert contract["type"] == "forbidden"
        assert {"grpc", "aiokafka", "mlops.bus"} <= set(contract["forbidden_modules"]), name
        assert f"services.{name}.__main__" in contract["forbidden_modules"], name
        assert all(source.startswith(f"services.{name}.") for source in contract["source_modules"]), name
        assert not contract.get("allow_indirect_imports"), f"{name}: indirect imports must count"
    assert CONTRACTS["services"]["type"] == "independence"
    assert CONTRACTS["services"]["modules"] == ["services.*"]
    assert CONTRACTS["libs"]["forbidden_modules"] == ["services"]


# --- The contracts fail when they should --------------------------------------------------------
#
# A throw-away tree shaped like this one: `shared` (a library with a Kafka bus and gRPC plumbing) and
# `apps.orders` / `apps.billing` (services with a core, a gRPC client and a servicer), under contracts
# of the same kinds and settings as ours. Each test adds one violation to the clean tree.

CLEAN_TREE = {
    "shared/__init__.py": "",
    "shared/errors.py": "import grpc\n\nCODE = grpc.StatusCode.NOT_FOUND\n",
    "shared/bus.py": "import aiokafka\n",
    "shared/peer.py": "import grpc\n",
    "apps/__init__.py": "",
    "apps/orders/__init__.py": "",
    "apps/orders/core.py": textwrap.dedent(
        """\
        from __future__ import annotations

        from typing import TYPE_CHECKING

        from shared.errors import CODE

        if TYPE_CHECKING:  # the client the composition root passes in
            from apps.orders.clients import Billing
        """
    ),
    "apps/orders/clients.py": "from shared import peer\n",
    "apps/orders/servicer.py": "import grpc\n\nfrom apps.orders import core\n",
    "apps/orders/__main__.py": "from shared import bus\nfrom apps.orders import clients, servicer\n",
    "apps/billing/__init__.py": "",
    "apps/billing/core.py": "",
}


def contracts_toml() -> str:
    """Our contracts' kinds over the throw-away tree, with our session settings; the core contract
    forbids what ours forbid (grpc, aiokafka, the bus, the service's adapters) and, as ours allow
    `mlops.errors -> grpc`, allows the error module's status codes."""
    externals = [module for module in CONTRACTS["evaluator-core"]["forbidden_modules"] if "." not in module]
    assert externals == ["grpc", "aiokafka"]
    return textwrap.dedent(
        f"""\
        [tool.importlinter]
        root_packages = ["shared", "apps"]
        include_external_packages = {json.dumps(CONFIG["include_external_packages"])}
        exclude_type_checking_imports = {json.dumps(CONFIG["exclude_type_checking_imports"])}

        [[tool.importlinter.contracts]]
        id = "libs"
        name = "libs"
        type = "forbidden"
        source_modules = ["shared"]
        forbidden_modules = ["apps"]

        [[tool.importlinter.contracts]]
        id = "services"
        name = "services"
        type = "independence"
        modules = ["apps.*"]

        [[tool.importlinter.contracts]]
        id = "orders-core"
        name = "orders-core"
        type = "forbidden"
        source_modules = ["apps.orders.core"]
        forbidden_modules = {json.dumps([*externals, "shared.bus", "apps.orders.__main__", "apps.orders.clients", "apps.orders.servicer"])}
        ignore_imports = ["shared.errors -> grpc"]
        """
    )


def check_tree(tmp_path: Path, changes: dict[str, str]) -> tuple[int, str]:
    for name, text in {**CLEAN_TREE, **changes}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "pyproject.toml").write_text(contracts_toml())
    result = lint_imports(tmp_path)
    return result.returncode, result.stdout + result.stderr


def broken(report: str) -> set[str]:
    """The contracts the report lists as broken ("<name> BROKEN", maybe with a count after it)."""
    return {match[1] for match in re.finditer(r"^(\S+) BROKEN\b", report, re.MULTILINE)}


def test_the_clean_throwaway_tree_keeps_its_contracts(tmp_path: Path) -> None:
    code, report = check_tree(tmp_path, {})
    assert code == 0, report
    assert "Contracts: 3 kept, 0 broken." in report, report


@pytest.mark.parametrize(
    ("change", "contract", "chain"),
    [
        ({"apps/orders/core.py": "import grpc\n"}, "orders-core", "apps.orders.core -> grpc"),
        ({"apps/orders/core.py": "from shared import bus\n"}, "orders-core", "shared.bus -> aiokafka"),
        (
            {"apps/orders/core.py": "from apps.orders.clients import Billing\n"},
            "orders-core",
            "shared.peer -> grpc",
        ),
        (
            {"apps/billing/core.py": "from apps.orders import core\n"},
            "services",
            "apps.billing.core -> apps.orders.core",
        ),
        ({"shared/reports.py": "import apps.billing\n"}, "libs", "shared.reports -> apps.billing"),
    ],
    ids=[
        "core-imports-grpc",
        "core-imports-the-bus",
        "core-imports-its-client-at-run-time",
        "service-imports-another",
        "library-imports-a-service",
    ],
)
def test_a_violating_import_breaks_its_contract(
    tmp_path: Path, change: dict[str, str], contract: str, chain: str
) -> None:
    code, report = check_tree(tmp_path, change)
    assert code == 1, report
    assert broken(report) == {contract}, report
    assert chain in report, report
