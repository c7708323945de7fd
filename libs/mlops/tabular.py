"""Tabular data sets as the trainer and the evaluator both see them: read, checked against a model
spec, split deterministically, turned into feature matrices.

The split is a function of each row's content alone (a stable hash of its feature and label
values), so a row keeps its split across data set versions, and a champion and a challenger are
always compared on the same held-out rows.

It also describes a data set as it is committed (column names, types, nulls, row count) from a
stream of chunks, in memory that does not grow with the file.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlops.errors import FailedPrecondition, InvalidArgument
from mlops.events.v1 import common_pb2

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALIDATION: "validation", TEST: "test"}
MIN_ROWS = 30
MIN_ROWS_PER_CLASS = 5


class DataValidationError(InvalidArgument):
    """The data set does not fit the spec; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("the data set does not fit the spec: " + "; ".join(problems))
        self.problems = problems


def read_table(path: Path, data_format: str) -> pd.DataFrame:
    if data_format == "csv":
        return pd.read_csv(path)
    if data_format == "parquet":
        return pd.read_parquet(path)
    raise InvalidArgument(f"format {data_format!r} is not supported; use csv or parquet")


@dataclass(frozen=True)
class Schema:
    """The columns a model uses, resolved from its spec against one data set version."""

    task: str
    label: str
    features: list[str]
    """In the order of the model's `input` tensor: the spec's order, or the data set's."""
    categorical: dict[str, list[str]] = field(default_factory=dict)
    """String features and their vocabularies (sorted); they enter the model as category codes."""
    classes: list[str] = field(default_factory=list)
    """Classification: the label values as strings, in the order of the model's class index."""

    def codes(self, feature: str) -> dict[str, int]:
        return {value: index for index, value in enumerate(self.categorical.get(feature, []))}


def _sorted_labels(values: pd.Series) -> list[str]:
    unique = values.dropna().unique()
    try:
        ordered = sorted(unique, key=float)
    except (TypeError, ValueError):
        ordered = sorted(unique, key=str)
    return [_label_text(v) for v in ordered]


def _label_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def resolve_schema(
    *,
    task: str,
    label: str,
    features: list[str],
    frame: pd.DataFrame,
    slices: Sequence[str] = (),
    min_rows: int = MIN_ROWS,
    min_rows_per_class: int = MIN_ROWS_PER_CLASS,
) -> Schema:
    """Check the data set against the spec and name every problem (`DataValidationError`)."""
    missing_slices = [c for c in slices if c not in frame.columns]
    problems: list[str] = []
    columns = list(frame.columns)
    if label not in columns:
        problems.append(f"label column {label!r} is missing (columns: {', '.join(map(str, columns))})")
    # No features listed: every column but the label and the slice columns (those are for reporting).
    chosen = list(features) if features else [c for c in columns if c != label and c not in slices]
    missing = [c for c in chosen if c not in columns]
    if missing:
        problems.append(f"feature columns missing: {', '.join(missing)}")
    present = [c for c in chosen if c in columns]
    if not present:
        problems.append("no feature columns to train on")
    if missing_slices:
        problems.append(f"slice columns missing: {', '.join(missing_slices)}")
    if len(frame) < min_rows:
        problems.append(f"{len(frame)} rows; at least {min_rows} are needed")
    categorical: dict[str, list[str]] = {}
    for column in present:
        values = frame[column]
        if values.isna().all():
            problems.append(f"feature {column!r} has no values (all missing)")
        elif not pd.api.types.is_numeric_dtype(values):
            if (
                pd.api.types.is_bool_dtype(values)
                or values.dtype == object
                or isinstance(values.dtype, pd.StringDtype)
            ):
                categorical[column] = sorted(values.dropna().astype(str).unique().tolist())
            else:
                problems.append(
                    f"feature {column!r} has type {values.dtype}, which is neither numeric nor text"
                )
    classes: list[str] = []
    if label in columns:
        target = frame[label]
        if target.isna().all():
            problems.append(f"label {label!r} has no values")
        elif task == "classification":
            classes = _sorted_labels(target)
            counts = target.dropna().map(_label_text).value_counts()
            if len(classes) < 2:
                problems.append(f"label {label!r} has {len(classes)} class; at least 2 are needed")
            small = {c: int(counts.get(c, 0)) for c in classes if counts.get(c, 0) < min_rows_per_class}
            if small:
                listed = ", ".join(f"{c!r} ({n})" for c, n in small.items())
                problems.append(f"classes with fewer than {min_rows_per_class} rows: {listed}")
        elif task == "regression" and not pd.api.types.is_numeric_dtype(target):
            problems.append(f"label {label!r} must be numeric for regression, got {target.dtype}")
    if problems:
        raise DataValidationError(problems)
    return Schema(task=task, label=label, features=present, categorical=categorical, classes=classes)


def _canonical(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Values in a form that does not depend on how a reader inferred types (1 and 1.0 hash alike)."""
    out = {}
    for column in columns:
        values = frame[column]
        out[column] = (
            values.astype("float64") if pd.api.types.is_numeric_dtype(values) else values.astype(str)
        )
    return pd.DataFrame(out)


def assign_splits(
    frame: pd.DataFrame, schema: Schema, *, validation_fraction: float, test_fraction: float
) -> np.ndarray:
    """TRAIN, VALIDATION or TEST for every row, from a stable hash of its content."""
    hashed = pd.util.hash_pandas_object(_canonical(frame, [*schema.features, schema.label]), index=False)
    unit = hashed.to_numpy(dtype=np.uint64) / float(2**64)
    splits = np.full(len(frame), TRAIN, dtype=np.int8)
    splits[unit < test_fraction + validation_fraction] = VALIDATION
    splits[unit < test_fraction] = TEST
    return splits


def feature_matrix(frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """float32 [rows, features] in schema order; text features as category codes (-1 when unseen), NaN kept."""
    columns = []
    for column in schema.features:
        if column in schema.categorical:
            codes = schema.codes(column)
            columns.append(frame[column].map(lambda v, c=codes: c.get(str(v), -1) if pd.notna(v) else np.nan))
        else:
            columns.append(frame[column])
    return np.column_stack([np.asarray(c, dtype=np.float32) for c in columns]).astype(np.float32)


def label_vector(frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """Class indices (int64) for classification, values (float32) for regression."""
    target = frame[schema.label]
    if schema.task == "classification":
        index = {c: i for i, c in enumerate(schema.classes)}
        return target.map(lambda v: index.get(_label_text(v), -1)).to_numpy(dtype=np.int64)
    return target.to_numpy(dtype=np.float32)


# Describing a committed data set ---------------------------------------------------------------
#
# The one reading of a committed file's columns, types, nulls and rows: the registry records it, and
# `mlops data commit` computes the same. CSV types are read as the trainer's pandas reads the values:
#
# - a column is int64 while every sampled value is a decimal integer within int64, float64 while
#   every one is a number (decimal, exponent, inf, nan; no "_" separators), string otherwise;
#   spaces around a number are allowed, a value of spaces alone is text;
# - an empty value makes its column nullable; a column with no value at all is string;
# - blank lines are not rows, before the header or after it;
# - the header names every column, each once; a sampled row with more or fewer fields than the
#   header is refused with its line; quoting is strict (RFC 4180).

CSV_SAMPLE_ROWS = 10_000
"""CSV column types come from this many first rows; the row count covers every row (rows past the
sample are counted, not parsed)."""
PARQUET_MAX_TAIL = 8 << 20
"""The most of a Parquet file's end kept while it streams past: its footer must fit in it."""
_READ_BUFFER = 1 << 20

_INT64, _FLOAT64, _STRING = 0, 1, 2
_KIND_NAMES = ("int64", "float64", "string")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)", re.I)
_INT64_RANGE = range(-(2**63), 2**63)

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


@dataclass(frozen=True)
class TableFacts:
    """What a committed file says about itself: columns in file order, and its data rows."""

    columns: list[common_pb2.Column]
    row_count: int


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks, so that the C readers can pull from it."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def describe(chunks: Iterable[bytes], data_format: str) -> TableFacts:
    """Columns and row count of a `csv` or `parquet` file read once, chunk by chunk, to its end."""
    if data_format == "csv":
        return csv_facts(chunks)
    if data_format == "parquet":
        return parquet_facts(chunks)
    raise InvalidArgument(f"format {data_format!r} is not supported; use csv or parquet")


def _value_kind(cell: str) -> int:
    """int64, float64 or string for one non-empty CSV value."""
    value = cell.strip()
    if _INTEGER.fullmatch(value):
        # Past int64 only a float holds it. Digits are counted first: int() refuses thousands of them.
        digits = len(value.lstrip("+-").lstrip("0"))
        return _INT64 if digits < 19 or (digits == 19 and int(value) in _INT64_RANGE) else _FLOAT64
    return _FLOAT64 if _NUMBER.fullmatch(value) else _STRING


def _header(reader) -> list[str]:
    header = next((row for row in reader if row), None)
    if header is None:
        raise InvalidArgument(
            "the CSV file is empty: no header row (a CSV data set starts with its column names)"
        )
    for position, name in enumerate(header, start=1):
        if not name.strip():
            raise InvalidArgument(f"column {position} of the CSV file's header has no name")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise InvalidArgument(
            f"the CSV file's header names {', '.join(map(repr, duplicates))} more than once"
        )
    return header


def csv_facts(chunks: Iterable[bytes], sample_rows: int | None = CSV_SAMPLE_ROWS) -> TableFacts:
    """Column names, types (int64, float64, string) and nulls from the first `sample_rows` rows (every
    row when None), and the count of every row; the rules are above."""
    # newline="\n": lines end at "\n" only and keep it, so that quoted line breaks reach csv intact.
    text = io.TextIOWrapper(
        io.BufferedReader(_ChunkReader(chunks), _READ_BUFFER), encoding="utf-8-sig", newline="\n"
    )
    reader = csv.reader(text, strict=True)
    try:
        header = _header(reader)
        width = len(header)
        kinds = [-1] * width  # -1: no value seen yet
        nullable = [False] * width
        rows = 0
        for row in reader:
            if not row:
                continue  # a blank line is not a row
            if len(row) != width:
                raise InvalidArgument(
                    f"line {reader.line_num} of the CSV file has {len(row)} fields, but the header has {width}"
                )
            rows += 1
            for index, cell in enumerate(row):
                if not cell:
                    nullable[index] = True
                elif kinds[index] != _STRING:
                    kind = _value_kind(cell)
                    if kind > kinds[index]:
                        kinds[index] = kind
            if rows == sample_rows:
                rows += _count_records(text)  # past the sample only the count matters
                break
    except UnicodeDecodeError as error:
        raise InvalidArgument(f"the CSV file is not UTF-8 text: {error}") from None
    except csv.Error as error:
        raise InvalidArgument(f"the CSV file is malformed at line {reader.line_num}: {error}") from None
    columns = [
        # A column with no value at all says nothing about its type; string is the safe reading.
        common_pb2.Column(name=name, type=_KIND_NAMES[kind] if kind >= 0 else "string", nullable=null)
        for name, kind, null in zip(header, kinds, nullable, strict=True)
    ]
    return TableFacts(columns=columns, row_count=rows)


def _count_records(text: io.TextIOBase) -> int:
    """CSV records from here to the end, where "here" is the start of a record; blank lines are none.

    Text without a quote character holds one record per line, so it is counted in blocks; from
    the first quote on, where a line break may sit inside a field, the csv module reads the rest.
    A Python object per row would make counting the rest of a large file most of its cost.
    """
    records = 0
    while block := text.read(_READ_BUFFER):
        block += text.readline()  # whole lines: csv would end a record where a piece of one ends
        if '"' in block:
            rest = csv.reader(itertools.chain(io.StringIO(block), text), strict=True)
            return records + sum(1 for row in rest if row)
        records += block.count("\n") - _blank_lines(block)
        if not block.endswith("\n"):  # the file's last line, without a line break
            records += 1 if block[block.rfind("\n") + 1 :].strip("\r") else 0
    return records


def _blank_lines(lines: str) -> int:
    """Empty lines among those that end in a line break (they are rare: the quick checks usually answer)."""
    crlf_blank = "\r" in lines and "\n\r\n" in lines  # "\r" first: one byte is found much faster
    if not crlf_blank and "\n\n" not in lines and not lines.startswith(("\n", "\r\n")):
        return 0
    return sum(1 for line in lines.split("\n")[:-1] if line in ("", "\r"))


def arrow_type_name(arrow_type: str) -> str:
    """A pyarrow type's name in the platform's vocabulary (`double` → `float64`)."""
    if arrow_type.startswith("timestamp"):
        return "timestamp"
    return _ARROW_TYPES.get(arrow_type, arrow_type)


def _tail(chunks: Iterable[bytes], limit: int) -> bytes:
    """The last bytes of a stream, at least `limit` of them when there are that many."""
    kept: deque[bytes] = deque()
    size = 0
    for chunk in chunks:
        kept.append(chunk)
        size += len(chunk)
        while size - len(kept[0]) >= limit:
            size -= len(kept.popleft())
    return b"".join(kept)


def parquet_facts(chunks: Iterable[bytes], max_tail: int = PARQUET_MAX_TAIL) -> TableFacts:
    """Columns, nulls and row count from a Parquet file's footer, the only part of it kept in memory.

    A Parquet file ends with its metadata, its length (4 bytes, little-endian) and `PAR1`; the
    metadata holds the schema, each row group's row count and its columns' null counts.
    """
    tail = _tail(chunks, max_tail)
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        raise InvalidArgument("the file is not Parquet: it does not end with the PAR1 magic bytes")
    length = int.from_bytes(tail[-8:-4], "little")
    if length + 8 > len(tail):
        if len(tail) >= max_tail:
            raise InvalidArgument(
                f"the Parquet footer is {length} bytes; footers of at most "
                f"{max_tail - 8} bytes are read (a file with fewer row groups or columns has a smaller one)"
            )
        raise InvalidArgument(f"the Parquet footer claims {length} bytes, more than the file holds")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise FailedPrecondition(
            "reading a Parquet file's schema needs pyarrow, which is not installed; "
            "`pip install pyarrow`, or commit the data as CSV"
        ) from None

    # The footer alone, behind the leading magic bytes, is all pyarrow reads to know the schema.
    try:
        parquet = pq.ParquetFile(pa.BufferReader(b"PAR1" + tail[-length - 8 :]))
    except Exception as error:  # pyarrow raises its own ArrowInvalid and OSError variants
        raise InvalidArgument(f"the Parquet footer cannot be read: {error}") from None
    metadata = parquet.metadata
    arrow_schema = parquet.schema_arrow
    flat = metadata.num_columns == len(arrow_schema)
    columns = []
    for index, arrow_field in enumerate(arrow_schema):
        nulls = _null_count(metadata, index) if flat else None
        columns.append(
            common_pb2.Column(
                name=arrow_field.name,
                type=arrow_type_name(str(arrow_field.type)),
                nullable=arrow_field.nullable if nulls is None else nulls > 0,
            )
        )
    return TableFacts(columns=columns, row_count=metadata.num_rows)


def _null_count(metadata, column: int) -> int | None:
    """Nulls in one column from the row groups' statistics; None when any row group lacks them."""
    total = 0
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_null_count:
            return None
        total += stats.null_count
    return total
