"""The schema and row count of a tabular snapshot, computed before it is committed.

CSV types are inferred with the standard library over the whole file (or its first `sample_rows`
rows): a column is `int64` if every non-empty value is an integer, `float64` if every one is a
number, `string` otherwise; it is nullable if any value is empty. Parquet files carry their own
schema, read with pyarrow when it is installed.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlops.errors import FailedPrecondition, InvalidArgument
from mlops.events.v1 import common_pb2

FORMATS = ("csv", "parquet")

_INT = re.compile(r"^[+-]?\d+$")
_INT64_MAX = 2**63 - 1

# The lattice a CSV column climbs as values are seen: int64 < float64 < string.
_RANK = {"int64": 0, "float64": 1, "string": 2}
_BY_RANK = {rank: name for name, rank in _RANK.items()}

# pyarrow's type names → the logical names of `mlops.events.v1.Column.type`.
_ARROW_TYPES = {
    "int8": "int32",
    "int16": "int32",
    "int32": "int32",
    "uint8": "int32",
    "uint16": "int32",
    "int64": "int64",
    "uint32": "int64",
    "uint64": "int64",
    "halffloat": "float32",
    "float": "float32",
    "double": "float64",
    "bool": "bool",
    "string": "string",
    "large_string": "string",
    "date32[day]": "timestamp",
    "date64[ms]": "timestamp",
}


@dataclass
class TableSchema:
    """Columns in file order, and the number of data rows."""

    columns: list[common_pb2.Column] = field(default_factory=list)
    row_count: int = 0


def format_of(path: Path, given: str | None) -> str:
    """The format the caller gave, else the one the file's suffix names."""
    if given:
        fmt = given.lower()
    else:
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in FORMATS:
            raise InvalidArgument(
                f"cannot tell the format of {path.name} from its suffix; pass --format csv or --format parquet"
            )
    if fmt not in FORMATS:
        raise InvalidArgument(f"format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    return fmt


def infer_schema(path: Path, fmt: str, *, progress: Callable[[int], None] | None = None) -> TableSchema:
    if fmt == "csv":
        return infer_csv_schema(path, progress=progress)
    return read_parquet_schema(path)


def _value_rank(value: str) -> int:
    if _INT.match(value):
        return 0 if abs(int(value)) <= _INT64_MAX else 1
    try:
        float(value)
    except ValueError:
        return 2
    return 1


def _text_lines(path: Path, progress: Callable[[int], None] | None) -> Iterator[str]:
    """The file's lines as text, reporting bytes read, so that a large file can show progress."""
    with path.open("rb") as handle:
        first = True
        for raw in handle:
            if progress:
                progress(len(raw))
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InvalidArgument(f"{path.name} is not UTF-8 text: {error}") from None
            if first:
                line = line.removeprefix("\ufeff")
                first = False
            yield line


def infer_csv_schema(
    path: Path, *, sample_rows: int | None = None, progress: Callable[[int], None] | None = None
) -> TableSchema:
    """Column types from every row (or the first `sample_rows`), and the exact row count."""
    reader = csv.reader(_text_lines(path, progress), strict=True)
    try:
        header = next(reader, None)
        if not header or all(not name.strip() for name in header):
            raise InvalidArgument(
                f"{path.name} has no header row; a CSV snapshot starts with its column names"
            )
        names = [name.strip() for name in header]
        for position, name in enumerate(names, start=1):
            if not name:
                raise InvalidArgument(f"{path.name}: column {position} of the header has no name")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise InvalidArgument(
                f"{path.name}: the header names {', '.join(map(repr, duplicates))} more than once"
            )

        width = len(names)
        ranks = [-1] * width  # -1: no value seen yet
        nullable = [False] * width
        rows = 0
        for row in reader:
            if not row:
                continue  # a blank line is not a row
            if len(row) != width:
                raise InvalidArgument(
                    f"{path.name}, line {reader.line_num}: {len(row)} fields, but the header has {width}"
                )
            rows += 1
            if sample_rows is not None and rows > sample_rows:
                continue  # past the sample only the count matters
            for index, raw in enumerate(row):
                value = raw.strip()
                if not value:
                    nullable[index] = True
                elif ranks[index] < 2:
                    ranks[index] = max(ranks[index], _value_rank(value))
    except csv.Error as error:
        raise InvalidArgument(f"{path.name}, line {reader.line_num}: malformed CSV ({error})") from None

    columns = [
        # A column with no value at all says nothing about its type; string is the safe reading.
        common_pb2.Column(name=name, type=_BY_RANK[max(rank, 0)] if rank >= 0 else "string", nullable=null)
        for name, rank, null in zip(names, ranks, nullable, strict=True)
    ]
    return TableSchema(columns=columns, row_count=rows)


def arrow_type_name(arrow_type: str) -> str:
    """A pyarrow type's name in the platform's vocabulary (`double` → `float64`)."""
    if arrow_type.startswith("timestamp"):
        return "timestamp"
    return _ARROW_TYPES.get(arrow_type, arrow_type)


def read_parquet_schema(path: Path) -> TableSchema:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise FailedPrecondition(
            "reading a Parquet file's schema needs pyarrow, which is not installed; "
            "`pip install pyarrow`, or commit the data as CSV"
        ) from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own ArrowInvalid and OSError variants
        raise InvalidArgument(f"{path.name} is not a readable Parquet file: {error}") from None
    metadata = parquet.metadata
    arrow_schema = parquet.schema_arrow
    flat = metadata.num_columns == len(arrow_schema)
    columns = []
    for index, arrow_field in enumerate(arrow_schema):
        nulls = _parquet_null_count(metadata, index) if flat else None
        columns.append(
            common_pb2.Column(
                name=arrow_field.name,
                type=arrow_type_name(str(arrow_field.type)),
                nullable=arrow_field.nullable if nulls is None else nulls > 0,
            )
        )
    return TableSchema(columns=columns, row_count=metadata.num_rows)


def _parquet_null_count(metadata, column_index: int) -> int | None:
    """Nulls in one column from the row groups' statistics; None when any row group lacks them."""
    total = 0
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column_index).statistics
        if stats is None or not stats.has_null_count:
            return None
        total += stats.null_count
    return total
