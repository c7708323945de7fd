"""Data set checks, the deterministic split and feature matrices: pure logic over data frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops.errors import InvalidArgument
from mlops.tabular import (
    TEST,
    TRAIN,
    VALIDATION,
    DataValidationError,
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


def former_csv_schema(data: bytes, sample_rows: int = 10_000):
    """The registry's former inference, on the whole file in memory: the streaming one must agree."""
    import csv
    import io

    reader = csv.reader(io.StringIO(data.decode("utf-8-sig")))
    header = next(reader)
    kinds = ["int64"] * len(header)
    nullable = [False] * len(header)
    rows = 0
    for rows, row in enumerate(reader, start=1):
        if rows > sample_rows:
            continue
        for index, cell in enumerate(row[: len(header)]):
            if cell == "":
                nullable[index] = True
                continue
            if kinds[index] == "int64":
                try:
                    int(cell)
                    continue
                except ValueError:
                    kinds[index] = "float64"
            if kinds[index] == "float64":
                try:
                    float(cell)
                except ValueError:
                    kinds[index] = "string"
    return [(name, kind, null) for name, kind, null in zip(header, kinds, nullable, strict=True)], rows


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


TRICKY_CSV = [
    # A BOM, CRLF endings, a quoted line break and comma, blank lines, an empty column, short and long rows.
    '\ufeffid,price,name,empty,flag\r\n1,2.5,"a\r\nb, c",,1\r\n2,,plain,,x\r\n\r\n3,1e3,"q""uote",,\r\n',
    "a,b\n1, 2\n1_000,nan\n-3,inf\n4\n5,6,7\n",
    "only,header\n",
    "x\n" + "".join(f"{i}\n" for i in range(10_050)) + "late text\n",  # past the sample: still int64
    "k,v\nü,é\n日本,語\n",
]


TRICKY_CSV += [
    # Past a sample of two rows: blank lines, CRLF, no final newline, then a quoted line break.
    "a,b\n1,2\n3,4\n\n5,6\r\n7,8",
    "a,b\n1,2\n3,4\n5,6\n" * 3 + '7,"x\ny"\n8,9\n\n',
    "a,b\n1,2\n",
]


@pytest.mark.parametrize("text", TRICKY_CSV)
@pytest.mark.parametrize("chunk_size", [1, 7, 4096, 1 << 20])
@pytest.mark.parametrize("sample_rows", [2, 10_000])
def test_streamed_csv_facts_equal_the_former_whole_file_inference(text, chunk_size, sample_rows):
    data = text.encode()
    facts = csv_facts(chunked(data, chunk_size), sample_rows=sample_rows)
    described = ([(c.name, c.type, c.nullable) for c in facts.columns], facts.row_count)
    assert described == former_csv_schema(data, sample_rows=sample_rows)


def test_a_generated_frame_is_described_like_the_former_inference():
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
    assert ([(c.name, c.type, c.nullable) for c in facts.columns], facts.row_count) == former_csv_schema(data)


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


def test_parquet_facts_come_from_the_footer_and_equal_the_whole_file_reading(tmp_path):
    from mlops.cli.schema import read_parquet_schema

    frame = wine(5000)
    frame.loc[::9, "alcohol"] = np.nan
    data = parquet_bytes(frame, row_group_size=1000)
    path = tmp_path / "wine.parquet"
    path.write_bytes(data)
    whole = read_parquet_schema(path)
    for size in (997, 1 << 20):
        facts = parquet_facts(chunked(data, size))
        assert facts.row_count == whole.row_count == 5000
        assert list(facts.columns) == list(whole.columns)
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
