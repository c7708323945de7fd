"""Write docs/configuration.md from the settings classes, or check that it is current.

    .venv/bin/python infra/docs/configuration.py           # (re)write docs/configuration.md
    .venv/bin/python infra/docs/configuration.py --check   # exit 1 when it is stale

Every pydantic-settings class with an environment prefix in `libs/mlops/settings.py` and in
`services/*/settings.py` becomes one table: each variable with its type, its default and the
docstring under its field. A secret's default is never written out: `SecretStr` fields and the
password inside a URL read "(secret)". Nothing in `libs/` or `services/` imports this script.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import inspect
import json
import re
import sys
import textwrap
import types
import typing
import urllib.parse
from pathlib import Path

from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "docs" / "configuration.md"
SECRET = "(secret)"

if str(ROOT) not in sys.path:  # run as a script: `services` is importable from the repository root
    sys.path.insert(0, str(ROOT))


def settings_modules() -> list[types.ModuleType]:
    """The shared settings module first, then each service's, by service name."""
    names = ["mlops.settings"] + [
        f"services.{path.parent.name}.settings" for path in sorted((ROOT / "services").glob("*/settings.py"))
    ]
    return [importlib.import_module(name) for name in names]


def documented_classes(module: types.ModuleType) -> list[type[BaseSettings]]:
    """Classes defined in `module` that read variables of their own prefix, in source order."""
    found = [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseSettings)
        and value.__module__ == module.__name__
        and value.model_config.get("env_prefix")
    ]
    return sorted(found, key=lambda cls: inspect.getsourcelines(cls)[1])


# --- reading the source: docstrings under fields, default factories ---------------------------


def _class_node(cls: type) -> tuple[ast.ClassDef, str] | None:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return None
    node = ast.parse(source).body[0]
    return (node, source) if isinstance(node, ast.ClassDef) else None


def _field_notes(cls: type) -> tuple[dict[str, str], dict[str, str]]:
    """Per field declared in `cls` itself: the docstring under it, and its default factory's source."""
    docstrings: dict[str, str] = {}
    factories: dict[str, str] = {}
    parsed = _class_node(cls)
    if parsed is None:
        return docstrings, factories
    node, source = parsed
    for statement, following in zip(node.body, [*node.body[1:], None], strict=True):
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        name = statement.target.id
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docstrings[name] = following.value.value
        if isinstance(statement.value, ast.Call):
            for keyword in statement.value.keywords:
                if keyword.arg == "default_factory":
                    factory = keyword.value
                    if isinstance(factory, ast.Lambda):
                        factories[name] = ast.get_source_segment(source, factory.body) or ""
                    else:
                        factories[name] = (ast.get_source_segment(source, factory) or "") + "()"
    return docstrings, factories


def _note(cls: type, name: str, index: int) -> str | None:
    """The first note (0: docstring, 1: factory source) found for `name` along the class's MRO."""
    for klass in cls.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            note = _field_notes(klass)[index].get(name)
            if note:
                return note
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return _one_line(text).replace("|", "\\|")


# --- rendering one field ------------------------------------------------------------------------


def variable_names(cls: type[BaseSettings], name: str, field: FieldInfo) -> list[str]:
    """The environment variables a field is read from, the one to prefer first."""
    prefixed = f"{cls.model_config.get('env_prefix', '')}{name}".upper()
    alias = field.validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if alias else []
    names = [choice for choice in choices if isinstance(choice, str) and choice == choice.upper()]
    if not names or cls.model_config.get("populate_by_name"):
        names.append(prefixed)
    return list(dict.fromkeys(names))


def _contains_secret(annotation: object) -> bool:
    if annotation is SecretStr:
        return True
    return any(_contains_secret(arg) for arg in typing.get_args(annotation))


def type_text(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        text = " or ".join(type_text(arg) for arg in present)
        return f"{text}, optional" if len(present) < len(args) else text
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin is dict:
        return f"JSON object of {type_text(args[0])} → {type_text(args[1])}"
    if origin in (list, tuple, set, frozenset):
        return f"JSON list of {type_text(args[0])}" if args else "JSON list"
    names = {
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
        Path: "path",
        SecretStr: "secret",
    }
    if isinstance(annotation, type):
        return names.get(annotation, annotation.__name__)
    return str(annotation).replace("typing.", "")


def bounds_text(field: FieldInfo) -> str:
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts = []
    for constraint in field.metadata:
        for key, sign in signs.items():
            value = getattr(constraint, key, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def _hide_password(text: str) -> str:
    """A URL's password replaced by "(secret)"; anything else unchanged."""
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        return text
    if not parts.scheme or parts.password is None:
        return text
    netloc = parts.netloc.replace(f":{parts.password}@", f":{SECRET}@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def default_text(cls: type[BaseSettings], name: str, field: FieldInfo) -> str:
    if field.default_factory is not None:
        source = _note(cls, name, 1)
        if field.default_factory in (dict, list, set, tuple):
            return f"`{json.dumps(field.default_factory())}`"  # type: ignore[call-arg]
        return f"computed: `{source}`" if source else "computed at start-up"
    value = field.default
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    if _contains_secret(field.annotation) or isinstance(value, SecretStr):
        return SECRET
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"`{value}`"
    if isinstance(value, str):
        return f"`{_hide_password(value)}`" if value else '`""` (empty)'
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{json.dumps(value, default=str)}`"


def describe(cls: type[BaseSettings], name: str, field: FieldInfo, names: list[str]) -> str:
    text = _note(cls, name, 0) or field.description or ""
    others = ", ".join(f"`{other}`" for other in names[1:])
    if others:
        text = f"{text} (also read as {others})".strip()
    return text


# --- rendering a class and the page -------------------------------------------------------------


def _source_path(cls: type) -> str:
    """The class's file in the repository, from its module's name, wherever the package is installed."""
    module = cls.__module__.replace(".", "/") + ".py"
    return f"libs/{module}" if module.startswith("mlops/") else module


def _summary(cls: type) -> str:
    """The class docstring's first paragraph, else its module's."""
    doc = inspect.cleandoc(cls.__doc__ or "") or inspect.cleandoc(sys.modules[cls.__module__].__doc__ or "")
    return _one_line(doc.split("\n\n")[0])


def render_class(cls: type[BaseSettings]) -> str:
    prefix = cls.model_config.get("env_prefix", "")
    source = _source_path(cls)
    lines = [
        f"## `{prefix}*`: {cls.__name__}",
        "",
        f"{_summary(cls)} Read by `{cls.__name__}` in [`{source}`](../{source}).",
        "",
        "| variable | type | default | what it sets |",
        "| --- | --- | --- | --- |",
    ]
    for name, field in cls.model_fields.items():
        names = variable_names(cls, name, field)
        kind = type_text(field.annotation)
        bounds = bounds_text(field)
        if bounds:
            kind = f"{kind}, {bounds}"
        lines.append(
            f"| `{names[0]}` | {_cell(kind)} | {_cell(default_text(cls, name, field))} "
            f"| {_cell(describe(cls, name, field, names))} |"
        )
    return "\n".join(lines) + "\n"


def render(classes: list[type[BaseSettings]] | None = None) -> str:
    if classes is None:
        classes = [cls for module in settings_modules() for cls in documented_classes(module)]
    import mlops.settings as shared

    environment = _one_line(inspect.cleandoc(shared.current_environment.__doc__ or ""))
    secrets_dir = _one_line(inspect.cleandoc(shared.Settings.__doc__ or ""))
    index = [
        f"- [`{cls.model_config.get('env_prefix')}*`: {cls.__name__}](#{_anchor(cls)})" for cls in classes
    ]
    head = [
        "# Configuration reference",
        "",
        "<!-- Generated by infra/docs/configuration.py from the settings classes; do not edit by hand:",
        "     run `make docs`. tests/unit/test_configuration_reference.py fails when this page is stale. -->",
        "",
        "Every setting is an environment variable, read by a typed pydantic-settings class with one prefix",
        "per concern. Services build the classes they need once, in their composition root. Beside the",
        "tables below:",
        "",
        f"- {environment}",
        f"- {secrets_dir}",
        "- Tracing is configured by the standard `OTEL_*` variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,",
        "  `OTEL_TRACES_SAMPLER`, …); S3 credentials come from the usual `AWS_*` variables or a shared",
        "  credentials file.",
        "- A secret's default is never printed here: it reads (secret).",
        "",
        "A value of the wrong type or out of its bounds (`integer, ≥ 1`) is refused when a service builds",
        "its settings, at start-up.",
        "",
        *index,
        "",
        "",
    ]
    return "\n".join(head) + "\n".join(render_class(cls) for cls in classes)


def _anchor(cls: type[BaseSettings]) -> str:
    title = f"{cls.model_config.get('env_prefix')}*: {cls.__name__}".lower()
    return re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/configuration.md is stale")
    parser.add_argument("--out", type=Path, default=OUTPUT, help="where the page goes (default: %(default)s)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current == text:
            print(f"{args.out} is up to date")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), "docs/configuration.md", "generated", lineterm=""
        )
        print("\n".join(list(diff)[:60]))
        print(f"{args.out} is stale: run `make docs`", file=sys.stderr)
        return 1
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
