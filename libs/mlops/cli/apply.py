"""`mlops apply -f spec.yaml`: YAML documents → ModelSpec messages → ApplyModelSpec.

Problems are reported by field path as the user wrote the keys (`spec.training.epochs`), all of them
at once, both for what this side can see (unknown fields, wrong types) and for what the registry
refuses (its INVALID_ARGUMENT message).
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from mlops.cli.context import cli_context, current_user
from mlops.cli.output import Output
from mlops.errors import InvalidArgument
from mlops.registry.v1 import registry_pb2

HELP = (
    "Apply model specs (YAML, several documents per file allowed; `-f -` reads stdin).\n\n"
    "A spec that differs from the model's latest one becomes its next spec version; an identical one "
    "changes nothing. Every problem is named by its field path, and nothing is applied while any "
    "document is invalid."
)

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT32 = (0, 2**32 - 1)
_UINT64 = (0, 2**64 - 1)
_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: _INT32,
    FieldDescriptor.CPPTYPE_INT64: _INT64,
    FieldDescriptor.CPPTYPE_UINT32: _UINT32,
    FieldDescriptor.CPPTYPE_UINT64: _UINT64,
}
_INTEGER = re.compile(r"^[+-]?\d+$")
# Well-known types that take free-form JSON rather than fields.
_FREE_FORM = {
    "google.protobuf.ListValue": list,
    "google.protobuf.Struct": dict,
    "google.protobuf.Value": object,
    "google.protobuf.Timestamp": str,
    "google.protobuf.Duration": str,
}


class SpecError(InvalidArgument):
    """One or more documents are invalid; `problems` are `path: what is wrong` lines."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        super().__init__(f"{where} is invalid:\n" + "\n".join(f"  - {problem}" for problem in problems))


@dataclass(frozen=True)
class SpecDocument:
    """One parsed document, and where it came from for messages (`spec.yaml, document 2`)."""

    where: str
    spec: registry_pb2.ModelSpec


def load_documents(text: str, source: str) -> list[tuple[str, object]]:
    """Every non-empty YAML document of `text`, each with a name for messages."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError(source, [f"not valid YAML{at}: {problem}"]) from None
    present = [(index, document) for index, document in enumerate(documents, start=1) if document is not None]
    if not present:
        raise SpecError(source, ["holds no YAML document"])
    several = len(documents) > 1
    return [(f"{source}, document {index}" if several else source, document) for index, document in present]


def parse_spec(document: object, where: str) -> registry_pb2.ModelSpec:
    """A YAML document (as Python values) → ModelSpec, or SpecError naming every bad field path."""
    problems: list[str] = []
    _check_message(document, registry_pb2.ModelSpec.DESCRIPTOR, "", problems)
    if problems:
        raise SpecError(_named(where, document), problems)
    try:
        return json_format.ParseDict(document, registry_pb2.ModelSpec())
    except json_format.ParseError as error:
        # The checks above mirror the parser; this is a backstop with its message tidied up.
        raise SpecError(_named(where, document), [_tidy_parse_error(str(error))]) from None


def _named(where: str, document: object) -> str:
    name = document.get("metadata", {}).get("name") if isinstance(document, dict) else None
    if isinstance(name, str) and name:
        return f"{where} ({name})"
    return where


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return f"{value!r} (a number)" if isinstance(value, int | float) else type(value).__name__


def _check_message(value: object, descriptor: Descriptor, path: str, problems: list[str]) -> None:
    if value is None:
        return
    free_form = _FREE_FORM.get(descriptor.full_name)
    if free_form is not None:
        if free_form is not object and not isinstance(value, free_form):
            expected = {list: "a list", dict: "a mapping", str: "a string"}[free_form]
            problems.append(f"{path or '(document)'}: expected {expected}, got {_kind_of(value)}")
        return
    if not isinstance(value, dict):
        problems.append(f"{path or '(document)'}: expected a mapping, got {_kind_of(value)}")
        return
    by_json_name = {field.json_name: field for field in descriptor.fields}
    oneofs_set: dict[str, list[str]] = {}
    for key, item in value.items():
        where = _join(path, str(key))
        field = descriptor.fields_by_name.get(key) if isinstance(key, str) else None
        field = field or (by_json_name.get(key) if isinstance(key, str) else None)
        if field is None:
            problems.append(f"{where}: unknown field{_suggestion(str(key), descriptor)}")
            continue
        oneof = field.containing_oneof
        if oneof is not None and len(oneof.fields) > 1 and item is not None:
            oneofs_set.setdefault(oneof.name, []).append(str(key))
        _check_field(item, field, where, problems)
    for oneof_name, keys in oneofs_set.items():
        if len(keys) > 1:
            options = ", ".join(f.name for f in descriptor.oneofs_by_name[oneof_name].fields)
            problems.append(f"{path or '(document)'}: set only one of {options}; got {', '.join(keys)}")


def _suggestion(key: str, descriptor: Descriptor) -> str:
    # Offer the spelling the spec's documentation uses: `apiVersion` at the top, snake_case below.
    names = {field.name: field.name for field in descriptor.fields}
    names |= {field.json_name: field.name for field in descriptor.fields}
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    if close:
        field = descriptor.fields_by_name[names[close[0]]]
        return f"; did you mean {_display_name(field)!r}?"
    known = ", ".join(sorted(_display_name(field) for field in descriptor.fields))
    return f" (known fields: {known})"


def _display_name(field: FieldDescriptor) -> str:
    return field.json_name if field.name == "api_version" else field.name


def _check_field(value: object, field: FieldDescriptor, path: str, problems: list[str]) -> None:
    if value is None:
        return  # YAML `key:` with nothing after it leaves the field unset
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {_kind_of(value)}")
            return
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"{path}: key {key!r} must be a string; quote it")
                continue
            _check_single(item, value_field, f"{path}.{key}", problems)
        return
    if field.is_repeated:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {_kind_of(value)}")
            return
        for index, item in enumerate(value):
            _check_single(item, field, f"{path}[{index}]", problems)
        return
    _check_single(value, field, path, problems)


def _check_single(value: object, field: FieldDescriptor, path: str, problems: list[str]) -> None:
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_MESSAGE:
        _check_message(value, field.message_type, path, problems)
        return
    if value is None:
        problems.append(f"{path}: expected a value, got null")
        return
    if cpp in _INT_RANGES:
        low, high = _INT_RANGES[cpp]
        number: int | None = None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and _INTEGER.match(value.strip()):
            number = int(value)
        if number is None:
            problems.append(f"{path}: expected an integer, got {_kind_of(value)}")
        elif not low <= number <= high:
            problems.append(f"{path}: {number} is out of range [{low}, {high}]")
    elif cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(value, str):
            try:
                float(value)  # YAML reads `1e-3` (no dot) as a string; the parser takes it
                ok = True
            except ValueError:
                ok = False
        if not ok:
            problems.append(f"{path}: expected a number, got {_kind_of(value)}")
    elif cpp == FieldDescriptor.CPPTYPE_BOOL:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {_kind_of(value)}")
    elif cpp == FieldDescriptor.CPPTYPE_STRING:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {_kind_of(value)}; quote it in YAML")
    elif cpp == FieldDescriptor.CPPTYPE_ENUM:
        names = [v.name for v in field.enum_type.values]
        if (isinstance(value, str) and value not in names) or not isinstance(value, str | int):
            problems.append(f"{path}: expected one of {', '.join(names)}, got {_kind_of(value)}")


_PARSE_AT = re.compile(r' at "?ModelSpec\.?([^" ]*)"?')
_PARSE_FIELD = re.compile(r"Failed to parse (\w+) field: ")


def _tidy_parse_error(message: str) -> str:
    """`Failed to parse spec field: … at ModelSpec.spec.gate.min..` → `spec.gate.min: …`."""
    located = _PARSE_AT.search(message)
    fields = _PARSE_FIELD.findall(message)
    detail = _PARSE_FIELD.sub("", message)
    detail = _PARSE_AT.sub("", detail).split("\n")[0].rstrip(".")
    path = located.group(1).rstrip(".") if located and located.group(1) else ".".join(fields)
    return f"{path}: {detail}" if path else detail


def read_specs(filenames: list[str]) -> list[SpecDocument]:
    """Every document of every file, parsed; SpecError listing every problem of every document."""
    specs: list[SpecDocument] = []
    problems: list[str] = []
    failed: list[str] = []
    for filename in filenames:
        if filename == "-":
            text, source = sys.stdin.read(), "<stdin>"
        else:
            path = Path(filename)
            if not path.is_file():
                raise typer.BadParameter(f"{filename} does not exist or is not a file", param_hint="'-f'")
            text, source = path.read_text(encoding="utf-8"), filename
        try:
            documents = load_documents(text, source)
        except SpecError as error:
            failed.append(error.where)
            problems.extend(f"{error.where}: {problem}" for problem in error.problems)
            continue
        for where, document in documents:
            try:
                specs.append(SpecDocument(where=_named(where, document), spec=parse_spec(document, where)))
            except SpecError as error:
                failed.append(error.where)
                problems.extend(f"{error.where}: {problem}" for problem in error.problems)
    if problems:
        if len(failed) == 1:
            only = failed[0]
            raise SpecError(only, [problem.removeprefix(f"{only}: ") for problem in problems])
        raise SpecError(f"{len(failed)} documents", problems)
    return specs


def server_problems(message: str) -> list[str]:
    """The registry's INVALID_ARGUMENT message split into one problem per field path."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]  # "the spec is invalid:" above a list of problems
    lines = [line.removeprefix("- ").strip() for line in lines]
    if len(lines) == 1 and "; " in lines[0]:
        parts = [part.strip() for part in lines[0].split("; ")]
        if all(": " in part for part in parts):
            return parts
    return lines or [message]


async def _apply_all(
    cli, specs: list[SpecDocument], dry_run: bool
) -> list[registry_pb2.ApplyModelSpecResponse]:
    applied_by = current_user()
    async with cli.registry() as registry:

        async def send(document: SpecDocument, validate_only: bool):
            request = registry_pb2.ApplyModelSpecRequest(
                spec=document.spec, applied_by=applied_by, dry_run=validate_only
            )
            return await cli.call(registry.ApplyModelSpec, request)

        async def validate(documents: list[SpecDocument]) -> None:
            refused: list[tuple[str, list[str]]] = []
            for document in documents:
                try:
                    await send(document, True)
                except InvalidArgument as error:
                    refused.append((document.where, server_problems(error.message)))
            if len(refused) == 1:
                raise SpecError(*refused[0])
            if refused:
                raise SpecError(
                    f"{len(refused)} documents",
                    [f"{where}: {problem}" for where, problems in refused for problem in problems],
                )

        # With several documents, check them all first, so that a bad one applies none of them.
        if dry_run or len(specs) > 1:
            await validate(specs)
        if dry_run:
            return []
        responses = []
        for document in specs:
            try:
                responses.append(await send(document, False))
            except InvalidArgument as error:
                raise SpecError(document.where, server_problems(error.message)) from None
        return responses


def apply(
    ctx: typer.Context,
    filenames: Annotated[
        list[str],
        typer.Option(
            "--filename",
            "-f",
            metavar="FILE",
            help="A YAML file of model specs, or '-' for stdin; repeatable.",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only validate, with the registry; store nothing.")
    ] = False,
) -> None:
    cli = cli_context(ctx)
    specs = read_specs(filenames)
    responses = cli.run("apply", lambda: _apply_all(cli, specs, dry_run), **{"mlops.spec.count": len(specs)})
    _print(cli.output, specs, responses, dry_run)


def _print(output: Output, specs, responses, dry_run: bool) -> None:
    if output.json_mode:
        if dry_run:
            output.json([{"model": doc.spec.metadata.name, "valid": True} for doc in specs])
        else:
            output.json(list(responses))
        return
    if dry_run:
        for document in specs:
            output.line(
                f"{document.spec.metadata.name}: valid ({document.where}); nothing applied (--dry-run)"
            )
        return
    for response in responses:
        name = response.applied.model or response.applied.spec.metadata.name
        if response.changed:
            output.line(f"{name}: applied as spec version {response.spec_version}")
        else:
            output.line(f"{name}: unchanged, spec version {response.spec_version}")
