"""The schema and row count of a local snapshot, as the registry records them: `mlops.tabular` reads
both, so that what `mlops data commit` sends and what the registry infers cannot disagree.

`mlops.tabular` (with pandas) is imported on first use, so that other commands start without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from mlops.errors import InvalidArgument, MlopsError
from mlops.events.v1 import common_pb2

FORMATS = ("csv", "parquet")
_READ_BYTES = 1 << 20


class TableSchema(Protocol):
    """What `infer_schema` returns (an `mlops.tabular.TableFacts`)."""

    columns: list[common_pb2.Column]
    row_count: int


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


def _chunks(path: Path, start: int, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    with path.open("rb") as handle:
        handle.seek(start)
        while chunk := handle.read(_READ_BYTES):
            if progress:
                progress(len(chunk))
            yield chunk


def infer_schema(path: Path, fmt: str, *, progress: Callable[[int], None] | None = None) -> TableSchema:
    """Columns and row count of a `csv` or `parquet` file, with `mlops.tabular.describe`; `progress`
    hears of every byte. Of a Parquet file only the end, where its footer is, is read."""
    from mlops import tabular

    start = 0
    if fmt == "parquet":
        size = path.stat().st_size
        start = max(size - tabular.PARQUET_MAX_TAIL, 0)
        if progress and start:
            progress(start)
    try:
        return tabular.describe(_chunks(path, start, progress), fmt)
    except MlopsError as error:
        raise type(error)(f"{path.name}: {error.message}") from None
