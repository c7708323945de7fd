"""What the CLI prints: readable tables for people, the protobuf JSON mapping for scripts (`--json`).

Results go to stdout, everything else (progress, notices, errors) to stderr, so that
`mlops --json … | jq` always reads one JSON document.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.markup import escape
from rich.table import Table

MISSING = "-"


def _console(*, stderr: bool) -> Console:
    # Rich assumes 80 columns when it is not writing to a terminal, which would fold sha256s and
    # URIs in piped output; COLUMNS still wins when set.
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal or os.environ.get("COLUMNS") else 200
    return Console(stderr=stderr, width=width, highlight=False)


def message_to_dict(message: Message) -> dict:
    """The protobuf JSON mapping, with fields at their defaults included (`"changed": false`)."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


class Output:
    """Where a command writes. `json_mode` is the global `--json` switch."""

    def __init__(self, *, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.out = _console(stderr=False)
        self.err = _console(stderr=True)

    def json(self, document: Message | Mapping | Sequence) -> None:
        """One JSON document on stdout: a message in the protobuf JSON mapping, or a dict/list of them."""
        sys.stdout.write(json.dumps(_jsonable(document), indent=2, sort_keys=False) + "\n")
        sys.stdout.flush()

    def print(self, *objects: object) -> None:
        self.out.print(*objects)

    def line(self, text: str) -> None:
        """A line of human output; markup in `text` is taken literally."""
        self.out.print(escape(text), soft_wrap=True)

    def notice(self, text: str) -> None:
        """Progress and side remarks, on stderr so that they never mix with results."""
        self.err.print(text, soft_wrap=True)

    def error(self, text: str) -> None:
        self.err.print(f"[bold red]error:[/] {escape(text)}", soft_wrap=True)

    def fields(self, pairs: Iterable[tuple[str, object]]) -> None:
        """`key: value` lines, aligned, values taken literally."""
        pairs = list(pairs)
        width = max((len(key) for key, _ in pairs), default=0)
        for key, value in pairs:
            self.out.print(f"[bold]{escape(key.ljust(width))}[/]  {escape(str(value))}", soft_wrap=True)

    def table(
        self, columns: Sequence[str], rows: Iterable[Sequence[object]], *, title: str | None = None
    ) -> None:
        table = Table(title=title, title_justify="left", header_style="bold", show_edge=False, pad_edge=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        empty = True
        for row in rows:
            empty = False
            table.add_row(*(escape(str(cell)) for cell in row))
        if empty and title:
            self.out.print(f"[bold]{escape(title)}[/]: none")
            return
        self.out.print(table)


def _jsonable(document: object) -> object:
    if isinstance(document, Message):
        return message_to_dict(document)
    if isinstance(document, Mapping):
        return {key: _jsonable(value) for key, value in document.items()}
    if isinstance(document, list | tuple):
        return [_jsonable(item) for item in document]
    return document


def timestamp(value: Timestamp | None) -> str:
    """RFC 3339 in UTC to the second, or '-' when unset."""
    if value is None or (value.seconds == 0 and value.nanos == 0):
        return MISSING
    return value.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")


def short_sha(sha256: str) -> str:
    return sha256[:12] if sha256 else MISSING


def number(value: float) -> str:
    """Metrics with four significant digits, integers as integers."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def enum_name(enum_type, value: int, prefix: str) -> str:
    """`RUN_STATUS_SUCCEEDED` → `succeeded`."""
    try:
        name = enum_type.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower() if value else MISSING


def mapping(values: Mapping[str, object]) -> str:
    """`{a: 1, b: 2}` → `a=1, b=2`, sorted; '-' when empty."""
    if not values:
        return MISSING
    return ", ".join(
        f"{key}={number(value) if isinstance(value, float) else value}"
        for key, value in sorted(values.items())
    )


def version(value: int) -> str:
    return f"v{value}" if value else MISSING
