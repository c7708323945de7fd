"""Data set checks, the deterministic split and feature matrices: pure logic over data frames."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from mlops.errors import FailedPrecondition, InvalidArgument
from mlops.tabular import (
    TEST,
    TRAIN,
    VALIDATION,
    DataValidationError,
    arrow_type_name,
    assign_splits,
    csv_facts,
    describe,
    feature_matrix,
    label_vector,
    parquet_facts,
    resolve_schema,
)


def wine(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "alcohol": rng.normal(13, 1, rows),
            "hue": rng.normal(1, 0.2, rows),
            "colour": rng.choice(["red", "white"], rows),
            "target": rng.integers(0, 3, rows),
        }
    )


def test_every_problem_is_named():
    frame = wine()
    frame["empty"] = np.nan
    with pytest.raises(DataValidationError) as caught:
        resolve_schema(
            task="classification", label="quality", features=["alcohol", "ph", "empty"], frame=frame
        )
    problems = caught.value.problems
    assert any("label column 'quality' is missing" in p for p in problems)
    assert "feature columns missing: ph" in problems
    assert "feature 'empty' has no values (all missing)" in problems


def test_rare_classes_and_non_numeric_regression_labels_are_refused():
    frame = wine()
    frame.loc[0, "target"] = 9
    with pytest.raises(DataValidationError, match=r"classes with fewer than 5 rows: '9' \(1\)"):
        resolve_schema(task="classification", label="target", features=[], frame=frame)
    with pytest.raises(DataValidationError, match="must be numeric for regression"):
        resolve_schema(task="regression", label="colour", features=["alcohol"], frame=frame)


def test_schema_defaults_to_every_column_but_the_label_and_encodes_text():
    frame = wine()
    schema = resolve_schema(task="classification", label="target", features=[], frame=frame)
    assert schema.features == ["alcohol", "hue", "colour"]
    assert schema.categorical == {"colour": ["red", "white"]}
    assert schema.classes == ["0", "1", "2"]
    matrix = feature_matrix(frame, schema)
    assert matrix.dtype == np.float32 and matrix.shape == (300, 3)
    assert set(np.unique(matrix[:, 2])) == {0.0, 1.0}
    assert label_vector(frame, schema).tolist() == frame["target"].tolist()


def test_a_row_keeps_its_split_across_versions_and_types():
    frame = wine(2000)
    schema = resolve_schema(task="classification", label="target", features=[], frame=frame)
    splits = assign_splits(frame, schema, validation_fraction=0.15, test_fraction=0.15)
    shares = np.bincount(splits, minlength=3) / len(frame)
    assert abs(shares[TEST] - 0.15) < 0.03 and abs(shares[VALIDATION] - 0.15) < 0.03 and shares[TRAIN] > 0.6
    # A later version: rows shuffled, new rows added, and the label read as float.
    later = pd.concat([frame.sample(frac=1, random_state=1), wine(500, seed=5)], ignore_index=True)
    later["target"] = later["target"].astype(float)
    later_splits = assign_splits(later, schema, validation_fraction=0.15, test_fraction=0.15)
    again = dict(zip(map(tuple, later.astype(str).to_numpy()[:, :2]), later_splits, strict=False))
    original = dict(zip(map(tuple, frame.astype(str).to_numpy()[:, :2]), splits, strict=False))
    assert all(again[key] == split for key, split in original.items())


def test_slice_columns_are_for_reporting_not_features_unless_listed():
    frame = wine()
    schema = resolve_schema(
        task="classification", label="target", features=[], slices=["colour"], frame=frame
    )
    assert schema.features == ["alcohol", "hue"]
    listed = resolve_schema(
        task="classification", label="target", features=["colour"], slices=["colour"], frame=frame
    )
    assert listed.features == ["colour"]
    with pytest.raises(DataValidationError, match="slice columns missing: region"):
        resolve_schema(task="classification", label="target", features=[], slices=["region"], frame=frame)


# Describing a committed file from a stream of chunks -------------------------------------------


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def facts_of(text: str, chunk_size: int = 1 << 20, **options):
    facts = csv_facts(chunked(text.encode(), chunk_size), **options)
    return [(c.name, c.type, c.nullable) for c in facts.columns], facts.row_count


# Each case: the CSV text, its columns and its row count. The registry and the CLI once read many
# of them differently (marked "was"); `mlops.tabular` is now the one reading of both.
CSV_CASES = {
    "types climb from int to float to string": (
        "id,ratio,mixed,word,late_string,big,least\n"
        "1,0.5,1,a,1,9223372036854775807,-9223372036854775808\n"
        "-2,3,2.5,b,2,9223372036854775808,1\n"
        "+3,1e-3,-4,c,x,1,2\n",
        [
            ("id", "int64", False),
            ("ratio", "float64", False),
            ("mixed", "float64", False),
            ("word", "string", False),
            ("late_string", "string", False),
            ("big", "float64", False),  # was int64 in the registry: past int64 only a float holds it
            ("least", "int64", False),
        ],
        3,
    ),
    "a number of thousands of digits is a float": (
        "a,b\n" + "9" * 5000 + ",0000000000000000000000001\n",
        [("a", "float64", False), ("b", "int64", False)],
        1,
    ),
    "a header-only file has string columns": ("a,b\n", [("a", "string", False), ("b", "string", False)], 0),
    "a column without a value is string": (  # was int64 in the registry
        "a,b\n1,\n2,\n",
        [("a", "int64", False), ("b", "string", True)],
        2,
    ),
    "spaces around a number are allowed, spaces alone are text": (  # the CLI called " " a null
        "a,b,c\n 2,1, \n3 ,2.5 ,x\n",
        [("a", "int64", False), ("b", "float64", False), ("c", "string", False)],
        2,
    ),
    "digit separators and other scripts' digits are text": (  # both once took them for numbers
        "a,b,c\n1_000,1_0.5,\u0661\u0662\n2,2,3\n",
        [("a", "string", False), ("b", "string", False), ("c", "string", False)],
        2,
    ),
    "nan and inf are floats": (
        "a,b\nnan,inf\n1,-Infinity\n",
        [("a", "float64", False), ("b", "float64", False)],
        2,
    ),
    "blank lines are not rows": (  # the registry counted them
        "\n\r\na,b\n\n1,2\r\n\r\n3,4\n\n",
        [("a", "int64", False), ("b", "int64", False)],
        2,
    ),
    "quoting, a BOM, CRLF and a quoted line break": (
        '\ufeff"name","note",n\r\n"Smith, J.","line one\nline two",1\r\n\r\n"O\'Brien","",2\r\n',
        [("name", "string", False), ("note", "string", True), ("n", "int64", False)],
        2,
    ),
    "no final newline": ("k,v\n\u00fc,1\n\u65e5\u672c,2", [("k", "string", False), ("v", "int64", False)], 2),
    "types come from the sample, the count from every row": (
        "x\n" + "".join(f"{i}\n" for i in range(10_050)) + "late text\n",
        [("x", "int64", False)],
        10_051,
    ),
}

CSV_REFUSALS = {
    "": "the CSV file is empty: no header row",
    "\n\n": "the CSV file is empty: no header row",
    "a,,c\n1,2,3\n": "column 2 of the CSV file's header has no name",
    "a,b,a\n1,2,3\n": "the CSV file's header names 'a' more than once",
    "a,b\n1,2\n3\n": "line 3 of the CSV file has 1 fields, but the header has 2",
    "a,b\n1,2,3\n": "line 2 of the CSV file has 3 fields, but the header has 2",
    'a,b\n1,"unterminated\n': "the CSV file is malformed at line",
    'a,b\n1,"x"y\n': "the CSV file is malformed at line 2",
}


@pytest.mark.parametrize("case", CSV_CASES)
@pytest.mark.parametrize("chunk_size", [1, 7, 4096, 1 << 20])
def test_csv_columns_types_nulls_and_rows(case, chunk_size):
    text, columns, rows = CSV_CASES[case]
    assert facts_of(text, chunk_size) == (columns, rows)


@pytest.mark.parametrize(("text", "complaint"), CSV_REFUSALS.items())
def test_malformed_csv_is_refused_with_where(text, complaint):
    with pytest.raises(InvalidArgument, match=complaint):
        facts_of(text, 3)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("quoted", [False, True])
def test_rows_past_the_sample_are_counted_as_parsed_rows_are(seed, quoted):
    """Past the sample rows are counted a block at a time: across blocks of 1 MiB, blank lines, CRLF,
    a missing final newline and (from a late quote on) quoted line breaks, the count is the parse's."""
    rng = np.random.default_rng(seed)
    rows = 120_000
    blanks = rng.choice(["", "\n", "\r\n"], size=rows, p=[0.9, 0.05, 0.05])
    endings = rng.choice(["\n", "\r\n"], size=rows, p=[0.7, 0.3])
    lines = ["a,b\n"] + [
        f"{blank}{i},{i % 997}{end}" for i, blank, end in zip(range(rows), blanks, endings, strict=True)
    ]
    if quoted:
        lines.insert(100_000, '7,"two\nlines"\n')
    text = "".join(lines)
    if seed % 2:
        text = text.rstrip("\r\n")
    everything = facts_of(text, sample_rows=None)
    sampled = facts_of(text, sample_rows=5)
    assert sampled[1] == everything[1] == rows + quoted
    assert sampled[0] == [("a", "int64", False), ("b", "int64", False)]


def test_a_generated_frame_is_described_as_pandas_reads_it():
    frame = wine(3000)
    frame.loc[::7, "hue"] = np.nan
    data = frame.to_csv(index=False).encode()
    facts = describe(chunked(data, 1000), "csv")
    assert [(c.name, c.type, c.nullable) for c in facts.columns] == [
        ("alcohol", "float64", False),
        ("hue", "float64", True),
        ("colour", "string", False),
        ("target", "int64", False),
    ]
    assert facts.row_count == len(frame)


def test_files_that_are_not_csv_get_a_clear_error():
    with pytest.raises(InvalidArgument, match="the CSV file is empty: no header row"):
        csv_facts([])
    with pytest.raises(InvalidArgument, match="not UTF-8 text"):
        csv_facts([b"a,b\n", b"\xff\xfe,1\n"])
    with pytest.raises(InvalidArgument, match="not supported"):
        describe([b"a"], "xlsx")


def parquet_bytes(frame: pd.DataFrame, **options) -> bytes:
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, **options)
    return buffer.getvalue()


def test_parquet_facts_come_from_the_footer_and_agree_with_pyarrow_reading_the_file(tmp_path):
    import pyarrow.parquet as pq

    frame = wine(5000)
    frame.loc[::9, "alcohol"] = np.nan
    data = parquet_bytes(frame, row_group_size=1000)
    path = tmp_path / "wine.parquet"
    path.write_bytes(data)
    whole = pq.ParquetFile(path)
    for size in (997, 1 << 20):
        facts = parquet_facts(chunked(data, size))
        assert facts.row_count == whole.metadata.num_rows == 5000
        assert [c.name for c in facts.columns] == whole.schema_arrow.names
    assert [(c.name, c.type, c.nullable) for c in facts.columns] == [
        ("alcohol", "float64", True),
        ("hue", "float64", False),
        ("colour", "string", False),
        ("target", "int64", False),
    ]


def test_a_parquet_file_keeps_only_a_bounded_tail_and_bad_files_are_refused():
    data = parquet_bytes(wine(200))
    footer = int.from_bytes(data[-8:-4], "little")
    with pytest.raises(InvalidArgument, match=f"the Parquet footer is {footer} bytes"):
        parquet_facts(chunked(data, 16), max_tail=footer // 2)
    with pytest.raises(InvalidArgument, match="not Parquet"):
        parquet_facts([b"a,b\n1,2\n"])
    with pytest.raises(InvalidArgument, match="footer cannot be read"):
        parquet_facts([b"PAR1" + b"\0" * 40 + (40).to_bytes(4, "little") + b"PAR1"])


def test_parquet_without_pyarrow_says_what_to_do(monkeypatch):
    data = parquet_bytes(wine(50))
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(FailedPrecondition, match="needs pyarrow"):
        parquet_facts([data])


def test_arrow_type_names_map_to_the_column_vocabulary():
    assert arrow_type_name("double") == "float64"
    assert arrow_type_name("float") == "float32"
    assert arrow_type_name("int16") == "int32"
    assert arrow_type_name("uint64") == "int64"
    assert arrow_type_name("large_string") == "string"
    assert arrow_type_name("timestamp[us, tz=UTC]") == "timestamp"
    assert arrow_type_name("decimal128(10, 2)") == "decimal128(10, 2)"
