"""The CLI's contract with scripts: exit codes, `--help`, JSON output; all without a server."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError
from typer.testing import CliRunner

from mlops.cli.main import ExitCode, app, exit_code_for
from mlops.cli.output import Output, mapping, number, timestamp
from mlops.cli.refs import RefError
from mlops.errors import (
    AlreadyExists,
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    IntegrityError,
    Internal,
    InvalidArgument,
    MlopsError,
    NotFound,
    Unavailable,
    error_for_status,
)
from mlops.registry.v1 import registry_pb2
from mlops.settings import BusSettings

runner = CliRunner()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotFound("x"), ExitCode.NOT_FOUND),
        (InvalidArgument("x"), ExitCode.INVALID),
        (Unavailable("x"), ExitCode.UNAVAILABLE),
        (DeadlineExceeded("x"), ExitCode.UNAVAILABLE),
        (FailedPrecondition("x"), ExitCode.FAILED),
        (Conflict("x"), ExitCode.FAILED),
        (AlreadyExists("x"), ExitCode.FAILED),
        (IntegrityError("x"), ExitCode.FAILED),
        (Internal("x"), ExitCode.FAILED),
        (MlopsError("x"), ExitCode.FAILED),
        (RefError("x"), ExitCode.USAGE),
        (OSError("disk full"), ExitCode.FAILED),
    ],
)
def test_each_error_has_its_exit_code(error, code):
    assert exit_code_for(error) == code


def test_statuses_from_the_wire_map_to_the_documented_codes():
    assert exit_code_for(error_for_status(grpc.StatusCode.NOT_FOUND, "m")) == 3
    assert exit_code_for(error_for_status(grpc.StatusCode.INVALID_ARGUMENT, "m")) == 4
    assert exit_code_for(error_for_status(grpc.StatusCode.UNAVAILABLE, "m")) == 5
    assert exit_code_for(error_for_status(grpc.StatusCode.UNKNOWN, "m")) == 1


def test_bad_configuration_is_an_invalid_argument(monkeypatch):
    monkeypatch.setenv("MLOPS_BUS_MAX_ATTEMPTS", "zero")
    with pytest.raises(ValidationError) as caught:
        BusSettings()
    assert exit_code_for(caught.value) == ExitCode.INVALID


def test_help_documents_the_exit_codes():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    for line in (
        "0  ok",
        "2  usage error",
        "3  not found",
        "4  invalid argument or bad spec",
        "5  unavailable",
    ):
        assert line in result.output
    for command in ("apply", "data", "models", "alias", "runs"):
        assert command in result.output


def test_usage_errors_exit_2():
    assert runner.invoke(app, ["models", "show", "wine@"]).exit_code == 2
    assert runner.invoke(app, ["models", "lineage", "wine@1@2"]).exit_code == 2
    assert runner.invoke(app, ["data", "show", "wine@latest"]).exit_code == 2
    assert runner.invoke(app, ["apply", "-f", "/nonexistent/spec.yaml"]).exit_code == 2
    assert runner.invoke(app, ["runs", "list", "--status", "sleeping"]).exit_code == 2
    assert runner.invoke(app, ["alias", "history", "wine", "--at", "yesterday"]).exit_code == 2
    assert runner.invoke(app, ["alias", "set", "wine", "production", "0"]).exit_code == 2
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2


def test_a_bad_spec_exits_4_before_any_call(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(
        "apiVersion: mlops/v1\nkind: ModelSpec\nmetadata: {name: m}\nspec: {training: {epochs: x}}\n"
    )
    # An unreachable registry proves that nothing was sent: the spec fails first.
    result = runner.invoke(app, ["--registry", "127.0.0.1:1", "apply", "-f", str(path)])
    assert result.exit_code == 4
    assert "spec.training.epochs: expected an integer, got 'x'" in result.output


def test_data_commit_refuses_a_bad_label_and_an_unknown_format(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("a\n1\n")
    result = runner.invoke(app, ["data", "commit", str(path), "--dataset", "d", "--label", "oops"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["--registry", "127.0.0.1:1", "data", "commit", str(path), "--dataset", "d"])
    assert result.exit_code == 4
    assert "pass --format csv or --format parquet" in result.output


def test_json_output_is_the_protobuf_mapping_with_defaults(capsys):
    response = registry_pb2.ApplyModelSpecResponse(spec_version=3, changed=False)
    Output(json_mode=True).json([response])
    [document] = json.loads(capsys.readouterr().out)
    assert document["specVersion"] == "3"  # int64 is a string in the JSON mapping
    assert document["changed"] is False  # defaults are printed, so scripts need not guess


def test_formatting_helpers():
    assert timestamp(Timestamp()) == "-"
    assert timestamp(Timestamp(seconds=1_736_929_800)) == "2025-01-15T08:30:00Z"
    assert number(0.123456) == "0.1235"
    assert number(30.0) == "30"
    assert mapping({"b": 0.5, "a": "x"}) == "a=x, b=0.5"
    assert mapping({}) == "-"
