"""The CLI's configuration file: contexts applied as defaults, written owner-only, refused when wrong."""

from __future__ import annotations

import os

import pytest

from mlops.cli import config
from mlops.errors import InvalidArgument, NotFound


def test_the_current_context_fills_what_the_shell_leaves_unset(tmp_path):
    path = tmp_path / "config.yaml"
    config.save(
        config.Config(
            current="local",
            contexts={"local": {"MLOPS_REGISTRY_ADDR": "a:1", "MLOPS_ARTIFACT_ROOT": "s3://b"}},
        ),
        path,
    )
    assert (os.stat(path).st_mode & 0o777) == 0o600
    environ = {"MLOPS_CONFIG": str(path), "MLOPS_ARTIFACT_ROOT": "file:///mine"}
    assert config.apply(environ) == "local"
    assert environ["MLOPS_REGISTRY_ADDR"] == "a:1"
    assert environ["MLOPS_ARTIFACT_ROOT"] == "file:///mine", "what the shell sets wins"


def test_mlops_context_picks_another_context_and_an_unknown_one_is_named(tmp_path):
    path = tmp_path / "config.yaml"
    config.save(config.Config(current="a", contexts={"a": {"MLOPS_X": "1"}, "b": {"MLOPS_X": "2"}}), path)
    environ = {"MLOPS_CONFIG": str(path), "MLOPS_CONTEXT": "b"}
    config.apply(environ)
    assert environ["MLOPS_X"] == "2"
    with pytest.raises(NotFound, match=r"no context named 'c' \(known: a, b\)"):
        config.apply({"MLOPS_CONFIG": str(path), "MLOPS_CONTEXT": "c"})


def test_no_file_means_no_context_and_a_wrong_file_is_refused_by_name(tmp_path):
    assert config.apply({"MLOPS_CONFIG": str(tmp_path / "absent.yaml")}) is None
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("kind: Config\ncontexts:\n- name: x\n  settings: {PATH: /bin}\n")
    with pytest.raises(InvalidArgument, match="sets PATH, which no setting reads"):
        config.load(wrong)


def test_only_platform_variables_are_captured_and_secrets_are_redacted():
    environ = {
        "MLOPS_KAFKA_BOOTSTRAP": "k:9092",
        "AWS_SECRET_ACCESS_KEY": "s",
        "HOME": "/root",
        "MLOPS_CONFIG": "x",
    }
    assert config.captured(environ) == {"MLOPS_KAFKA_BOOTSTRAP": "k:9092", "AWS_SECRET_ACCESS_KEY": "s"}
    shown = config.redacted(
        {
            "AWS_SECRET_ACCESS_KEY": "s",
            "MLOPS_KAFKA_SASL_PASSWORD": "p",
            "MLOPS_DATABASE_URL": "postgresql://u:pw@h/d",
        }
    )
    assert shown == {
        "AWS_SECRET_ACCESS_KEY": "<secret>",
        "MLOPS_DATABASE_URL": "postgresql://u:<secret>@h/d",
        "MLOPS_KAFKA_SASL_PASSWORD": "<secret>",
    }
