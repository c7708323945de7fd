"""The schema `mlops data commit` computes before uploading: the registry's own reading of the file."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pandas as pd
import pytest

from mlops import tabular
from mlops.cli.schema import format_of, infer_schema
from mlops.errors import FailedPrecondition, InvalidArgument
from tests.unit.test_tabular import CSV_CASES, CSV_REFUSALS, chunked, wine


def described(facts) -> tuple[list[tuple[str, str, bool]], int]:
    return [(c.name, c.type, c.nullable) for c in facts.columns], facts.row_count


@pytest.mark.parametrize("case", CSV_CASES)
def test_the_cli_reads_a_csv_file_as_the_registry_does(tmp_path, case):
    text, columns, rows = CSV_CASES[case]
    path = tmp_path / "data.csv"
    path.write_bytes(text.encode())
    registry = described(tabular.describe(chunked(text.encode(), 4096), "csv"))
    assert described(infer_schema(path, "csv")) == registry == (columns, rows)


@pytest.mark.parametrize(("text", "complaint"), CSV_REFUSALS.items())
def test_the_cli_refuses_what_the_registry_refuses_and_names_the_file(tmp_path, text, complaint):
    path = tmp_path / "data.csv"
    path.write_bytes(text.encode())
    with pytest.raises(InvalidArgument, match="^data.csv: " + re.escape(complaint)):
        infer_schema(path, "csv")
    with pytest.raises(InvalidArgument, match="^" + re.escape(complaint)):
        tabular.describe([text.encode()], "csv")


def test_non_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("name\nJosé\n".encode("latin-1"))
    with pytest.raises(InvalidArgument, match=r"latin1\.csv: the CSV file is not UTF-8"):
        infer_schema(path, "csv")


def test_progress_reports_every_byte(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n" + "1,2\n" * 600_000)
    seen: list[int] = []
    infer_schema(path, "csv", progress=seen.append)
    assert sum(seen) == path.stat().st_size and len(seen) > 1


def test_a_parquet_file_is_read_from_its_end_as_the_registry_reads_it(tmp_path, monkeypatch):
    frame = wine(5000)
    frame.loc[::9, "alcohol"] = None
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, row_group_size=500)
    data = buffer.getvalue()
    path = tmp_path / "wine.parquet"
    path.write_bytes(data)
    registry = described(tabular.describe(chunked(data, 1000), "parquet"))
    assert described(infer_schema(path, "parquet")) == registry
    assert registry[1] == 5000
    # Only the end that holds the footer is read; progress still covers the whole file.
    tail = int.from_bytes(data[-8:-4], "little") + 8 + 100
    monkeypatch.setattr(tabular, "PARQUET_MAX_TAIL", tail)
    seen: list[int] = []
    assert described(infer_schema(path, "parquet", progress=seen.append)) == registry
    assert sum(seen) == len(data) and seen[0] == len(data) - tail


def test_parquet_without_pyarrow_says_what_to_do(tmp_path, monkeypatch):
    path = tmp_path / "x.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(
        FailedPrecondition, match=r"x\.parquet: reading a Parquet file's schema needs pyarrow"
    ):
        infer_schema(path, "parquet")


def test_format_comes_from_the_flag_or_the_suffix(tmp_path):
    assert format_of(tmp_path / "x.csv", None) == "csv"
    assert format_of(tmp_path / "x.PARQUET", None) == "parquet"
    assert format_of(tmp_path / "x.txt", "CSV") == "csv"
    with pytest.raises(InvalidArgument, match="pass --format csv or --format parquet"):
        format_of(tmp_path / "x.txt", None)
    with pytest.raises(InvalidArgument, match="'json' is not supported"):
        format_of(tmp_path / "x.csv", "json")


def test_the_cli_starts_without_pandas():
    """The inferencer's pandas is imported when a file is read, not by every command."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, mlops.cli.main; print('pandas' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "False"
