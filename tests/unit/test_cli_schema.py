"""The schema `mlops data commit` computes before uploading: CSV types inferred over every row."""

from __future__ import annotations

import sys

import pytest

from mlops.cli.schema import arrow_type_name, format_of, infer_csv_schema, read_parquet_schema
from mlops.errors import FailedPrecondition, InvalidArgument


def schema_of(tmp_path, text: str, **kwargs):
    path = tmp_path / "data.csv"
    path.write_bytes(text.encode("utf-8"))
    schema = infer_csv_schema(path, **kwargs)
    return [(c.name, c.type, c.nullable) for c in schema.columns], schema.row_count


def test_types_climb_from_int_to_float_to_string(tmp_path):
    columns, rows = schema_of(
        tmp_path,
        "id,ratio,mixed,word,late_string,big\n"
        "1,0.5,1,a,1,9223372036854775807\n"
        "-2,3,2.5,b,2,9223372036854775808\n"
        "+3,1e-3,-4,c,x,1\n",
    )
    assert columns == [
        ("id", "int64", False),
        ("ratio", "float64", False),
        ("mixed", "float64", False),
        ("word", "string", False),
        ("late_string", "string", False),
        ("big", "float64", False),  # past int64: only a float can hold it
    ]
    assert rows == 3


def test_every_row_counts_not_only_the_first(tmp_path):
    body = "".join(f"{i},{i}\n" for i in range(5_000)) + "5000,oops\n"
    columns, rows = schema_of(tmp_path, "a,b\n" + body)
    assert columns == [("a", "int64", False), ("b", "string", False)]
    assert rows == 5_001


def test_a_sample_bounds_the_inference_but_not_the_count(tmp_path):
    body = "".join(f"{i}\n" for i in range(100)) + "text\n"
    columns, rows = schema_of(tmp_path, "a\n" + body, sample_rows=100)
    assert columns == [("a", "int64", False)]
    assert rows == 101


def test_empty_values_make_a_column_nullable_without_changing_its_type(tmp_path):
    columns, _ = schema_of(tmp_path, "a,b,c\n1,,\n,2.5,\n3, ,\n")
    assert columns == [("a", "int64", True), ("b", "float64", True), ("c", "string", True)]


def test_quoting_bom_crlf_and_blank_lines(tmp_path):
    text = '\ufeff"name","note",n\r\n"Smith, J.","line one\nline two",1\r\n\r\n"O\'Brien","",2\r\n'
    columns, rows = schema_of(tmp_path, text)
    assert columns == [("name", "string", False), ("note", "string", True), ("n", "int64", False)]
    assert rows == 2


def test_a_header_only_file_has_no_rows_and_string_columns(tmp_path):
    columns, rows = schema_of(tmp_path, "a,b\n")
    assert columns == [("a", "string", False), ("b", "string", False)]
    assert rows == 0


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "has no header row"),
        ("a,,c\n1,2,3\n", "column 2 of the header has no name"),
        ("a,b,a\n1,2,3\n", "the header names 'a' more than once"),
        ("a,b\n1,2\n3\n", r"line 3: 1 fields, but the header has 2"),
        ('a,b\n1,"unterminated\n', "malformed CSV"),
    ],
)
def test_malformed_csv_is_refused_with_where(tmp_path, text, complaint):
    with pytest.raises(InvalidArgument, match=complaint):
        schema_of(tmp_path, text)


def test_non_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("name\nJosé\n".encode("latin-1"))
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        infer_csv_schema(path)


def test_progress_reports_every_byte(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    seen: list[int] = []
    infer_csv_schema(path, progress=seen.append)
    assert sum(seen) == path.stat().st_size


def test_format_comes_from_the_flag_or_the_suffix(tmp_path):
    assert format_of(tmp_path / "x.csv", None) == "csv"
    assert format_of(tmp_path / "x.PARQUET", None) == "parquet"
    assert format_of(tmp_path / "x.txt", "CSV") == "csv"
    with pytest.raises(InvalidArgument, match="pass --format csv or --format parquet"):
        format_of(tmp_path / "x.txt", None)
    with pytest.raises(InvalidArgument, match="'json' is not supported"):
        format_of(tmp_path / "x.csv", "json")


def test_parquet_without_pyarrow_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(FailedPrecondition, match="needs pyarrow"):
        read_parquet_schema(tmp_path / "x.parquet")


def test_arrow_type_names_map_to_the_column_vocabulary():
    assert arrow_type_name("double") == "float64"
    assert arrow_type_name("float") == "float32"
    assert arrow_type_name("int16") == "int32"
    assert arrow_type_name("uint64") == "int64"
    assert arrow_type_name("large_string") == "string"
    assert arrow_type_name("timestamp[us, tz=UTC]") == "timestamp"
    assert arrow_type_name("decimal128(10, 2)") == "decimal128(10, 2)"
