"""The CLI as people type it: `--json` anywhere, `--version`, completion, a root help that lists every
group, and the usage errors of `retrain` and `models tag`; all without a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from mlops.cli import config
from mlops.cli.main import DISTRIBUTION, ExitCode, app
from mlops.cli.retrain import retrain_request

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _commands(command, path=()):
    """Every command and group under `command`, with the words that reach it."""
    for name, child in sorted(getattr(command, "commands", {}).items()):
        yield (*path, name), child
        yield from _commands(child, (*path, name))


def _mlops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI as the shell starts it."""
    return subprocess.run(
        [sys.executable, "-m", "mlops.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


@pytest.fixture
def two_contexts(tmp_path) -> dict[str, str]:
    path = tmp_path / "config.yaml"
    loaded = config.Config(
        current="b", contexts={"a": {"MLOPS_REGISTRY_ADDR": "h:1"}, "b": {"MLOPS_REGISTRY_ADDR": "h:2"}}
    )
    config.save(loaded, path)
    return {"MLOPS_CONFIG": str(path)}


@pytest.mark.parametrize(
    "args",
    [
        ["--json", "context", "list"],
        ["context", "--json", "list"],
        ["context", "list", "--json"],
    ],
)
def test_json_may_come_before_or_after_any_command(args, two_contexts):
    result = runner.invoke(app, args, env=two_contexts)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["current"] == "b" and document["contexts"] == ["a", "b"]


def test_without_json_the_output_is_for_people(two_contexts):
    result = runner.invoke(app, ["context", "list"], env=two_contexts)
    assert result.exit_code == 0
    assert result.stdout.startswith("  a ") and "* b" in result.stdout


def test_every_command_and_group_takes_json():
    root = typer.main.get_command(app)
    missing = [
        " ".join(path)
        for path, command in _commands(root)
        if not any("--json" in p.opts for p in command.params)
    ]
    assert not missing, f"no --json on: {missing}"
    result = runner.invoke(app, ["models", "list", "--help"], env={"COLUMNS": "200"})
    assert "--json" in result.output


def test_json_after_a_command_still_maps_a_failure_to_its_exit_code():
    result = runner.invoke(app, ["--registry", "127.0.0.1:1", "--timeout", "5", "models", "list", "--json"])
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert result.stdout == ""  # nothing but a JSON document ever goes to stdout
    assert "127.0.0.1:1" in result.stderr


def test_version_is_the_installed_package_version():
    result = _mlops("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mlops {metadata.version(DISTRIBUTION)}"


def test_root_help_lists_every_group_on_one_line():
    root = typer.main.get_command(app)
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for name, command in sorted(root.commands.items()):
        summary = command.get_short_help_str(limit=200)
        assert summary, f"{name} has no description"
        assert any(f" {name} " in line and summary in line for line in lines), (
            f"{name}: {summary!r} not on one line"
        )
    for group in ("context", "data", "models", "alias", "runs", "rollout", "drift", "monitor", "retrain"):
        assert group in root.commands


def test_completion_script_and_candidates():
    script = _mlops("--show-completion", env={"SHELL": "/bin/bash"})
    assert script.returncode == 0, script.stderr
    assert "_MLOPS_COMPLETE=complete_bash" in script.stdout
    assert "complete -o default -F _mlops_completion mlops" in script.stdout

    def candidates(words: str) -> list[str]:
        env = {
            "_MLOPS_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        }
        result = _mlops(env=env)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # nothing may reach the prompt but the candidates
        return result.stdout.split()

    assert candidates("mlops mo") == ["models", "monitor"]
    assert candidates("mlops models s") == ["show", "search"]
    assert "--remove" in candidates("mlops models tag --")


def test_retrain_request_from_what_is_typed():
    assert retrain_request("m", None, None, "") == retrain_request("m", "", None, "")
    request = retrain_request("m", "wine@4", None, "drifted")
    assert (request.model, request.dataset, request.dataset_version, request.reason) == (
        "m",
        "wine",
        4,
        "drifted",
    )
    request = retrain_request("m", "wine", 5, "")
    assert (request.dataset, request.dataset_version) == ("wine", 5)
    request = retrain_request("m", None, 6, "")
    assert (request.dataset, request.dataset_version) == ("", 6)


@pytest.mark.parametrize(
    "args",
    [
        ["retrain", "m", "--dataset", "wine@3", "--dataset-version", "4"],
        ["retrain", "m", "--dataset", "wine@" + "a" * 64],
        ["retrain", "m", "--dataset", "wine@latest"],
        ["retrain", "m", "--dataset-version", "0"],
        ["models", "tag", "m", "1"],
        ["models", "tag", "m", "1", "team"],
        ["models", "tag", "m", "0", "team=risk"],
    ],
)
def test_usage_errors_exit_2_before_any_call(args):
    # An unreachable registry proves that nothing was sent.
    result = runner.invoke(app, ["--registry", "127.0.0.1:1", *args])
    assert result.exit_code == ExitCode.USAGE, result.output
