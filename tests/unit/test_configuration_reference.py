"""docs/configuration.md is generated from the settings classes and must say what they read."""

from __future__ import annotations

import importlib.util
import os
import typing
from pathlib import Path

import pytest
from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "mlops_docs_configuration", ROOT / "infra/docs/configuration.py"
)
assert _spec is not None and _spec.loader is not None
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def all_classes() -> list[type[BaseSettings]]:
    return [cls for module in reference.settings_modules() for cls in reference.documented_classes(module)]


def test_the_checked_in_reference_is_current():
    assert (ROOT / "docs/configuration.md").read_text() == reference.render(), (
        "docs/configuration.md is stale: run `make docs`"
    )


def test_the_check_mode_fails_on_a_stale_page(tmp_path, capsys):
    page = tmp_path / "configuration.md"
    page.write_text(reference.render().replace("MLOPS_BUS_MAX_ATTEMPTS", "MLOPS_BUS_MAX_TRIES"))
    assert reference.main(["--check", "--out", str(page)]) == 1
    assert "run `make docs`" in capsys.readouterr().err
    assert reference.main(["--out", str(page)]) == 0
    assert reference.main(["--check", "--out", str(page)]) == 0


def test_every_settings_class_with_a_prefix_is_documented():
    documented = {cls.__name__ for cls in all_classes()}
    assert {"KafkaSettings", "DatabaseSettings", "GrpcServerSettings", "GrpcClientSettings"} <= documented
    services = {path.parent.name for path in (ROOT / "services").glob("*/settings.py")}
    assert {f"{name.capitalize()}Settings" for name in services} <= documented
    for cls in all_classes():
        assert (ROOT / reference._source_path(cls)).is_file(), (
            f"{cls.__name__}: its page links a missing file"
        )


class Grown(BaseSettings):
    """A settings class the test grows."""

    model_config = SettingsConfigDict(env_prefix="MLOPS_TESTGROWN_")

    port: int = Field(7000, ge=1)
    """The port it listens on."""


def test_a_field_added_to_a_settings_class_changes_the_reference():
    class Grew(Grown):
        model_config = SettingsConfigDict(env_prefix="MLOPS_TESTGROWN_")

        window_s: float = Field(2.5, gt=0)
        """How long a window lasts."""

    before, after = reference.render_class(Grown), reference.render_class(Grew)
    assert "`MLOPS_TESTGROWN_PORT` | integer, ≥ 1 | `7000` | The port it listens on. |" in before
    assert "MLOPS_TESTGROWN_WINDOW_S" not in before
    assert "| `MLOPS_TESTGROWN_WINDOW_S` | number, > 0 | `2.5` | How long a window lasts. |" in after
    assert "The port it listens on." in after, "an inherited field keeps its docstring"
    assert reference.render([Grown]) != reference.render([Grew])


def test_a_secret_default_is_never_written():
    class Secretive(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="MLOPS_TESTSECRET_")

        token: SecretStr = SecretStr("hunter2-token")
        """A token."""
        optional_token: SecretStr | None = SecretStr("hunter2-optional")
        url: str = "postgresql+asyncpg://svc:hunter2-url@db:5432/mlops"
        """Where the database is."""
        peer: str = Field("127.0.0.1:1", validation_alias=AliasChoices("MLOPS_TESTPEER_ADDR", "peer"))

    page = reference.render_class(Secretive)
    assert "hunter2" not in page
    assert "| `MLOPS_TESTSECRET_TOKEN` | secret | (secret) | A token. |" in page
    assert "| `MLOPS_TESTSECRET_OPTIONAL_TOKEN` | secret, optional | (secret) |" in page
    assert "`postgresql+asyncpg://svc:(secret)@db:5432/mlops`" in page
    assert "| `MLOPS_TESTPEER_ADDR` |" in page, "a variable named by an alias is listed by that name"


def _probe_value(field) -> str | None:
    """A value other than the default that the field accepts, for strings and integers; else None."""
    kinds = [arg for arg in typing.get_args(field.annotation) if arg is not type(None)] or [field.annotation]
    if kinds == [str]:
        return "probe-value"
    if kinds == [int]:
        low = max([getattr(m, "ge", None) or 0 for m in field.metadata] + [1])
        candidate = max(low, 1) + 12_345
        if field.default is not PydanticUndefined and field.default == candidate:
            candidate += 1
        highs = [getattr(m, "le", None) for m in field.metadata if getattr(m, "le", None) is not None]
        return str(candidate) if all(candidate <= high for high in highs) else None
    return None


def _read(cls: type[BaseSettings], field_name: str) -> object:
    """The field's value as the class read it; where a rule across fields refuses the value alone
    (a token port needs a token file), the value the rule was given."""
    try:
        return getattr(cls(), field_name)
    except ValidationError as error:
        given = [e["input"] for e in error.errors() if e["loc"] == () and isinstance(e["input"], dict)]
        if given and field_name in given[0]:
            return given[0][field_name]
        raise


def test_each_documented_variable_reaches_its_field(monkeypatch):
    """Set each documented variable (string and integer fields) and read it back through its class."""
    for name in list(os.environ):
        if name.startswith("MLOPS_"):
            monkeypatch.delenv(name)
    checked = 0
    for cls in all_classes():
        for field_name, field in cls.model_fields.items():
            value = _probe_value(field)
            if value is None:
                continue
            for variable in reference.variable_names(cls, field_name, field):
                with monkeypatch.context() as scope:
                    scope.setenv(variable, value)
                    got = _read(cls, field_name)
                assert str(got) == value, f"{variable} did not reach {cls.__name__}.{field_name}"
                checked += 1
    assert checked > 50, checked


@pytest.mark.parametrize(
    ("annotation", "text"),
    [
        (int, "integer"),
        (Path | None, "path, optional"),
        (typing.Literal["a", "b"], "one of `a`, `b`"),
        (dict[str, int], "JSON object of string → integer"),
    ],
)
def test_types_read_as_words(annotation, text):
    assert reference.type_text(annotation) == text
