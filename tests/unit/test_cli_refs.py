"""Parsing `NAME@VERSION|@ALIAS` and friends, as typed on the command line."""

from __future__ import annotations

import pytest

from mlops.cli.refs import DatasetRef, ModelRef, RefError, parse_dataset_ref, parse_labels, parse_model_ref

SHA = "3f5a0c1e9b2d4f6a8c0e1f3a5b7d9e2c4a6b8d0f1e3c5a7b9d2f4e6a8c0b1d3e"


@pytest.mark.parametrize(
    ("text", "expected", "selector"),
    [
        ("wine-quality", ModelRef("wine-quality"), {}),
        ("wine-quality@3", ModelRef("wine-quality", version=3), {"version": 3}),
        ("wine-quality@production", ModelRef("wine-quality", alias="production"), {"alias": "production"}),
        ("wine-quality@canary-2", ModelRef("wine-quality", alias="canary-2"), {"alias": "canary-2"}),
        ("  wine@12 ", ModelRef("wine", version=12), {"version": 12}),
    ],
)
def test_model_refs(text, expected, selector):
    ref = parse_model_ref(text)
    assert ref == expected
    assert ref.selector() == selector
    assert str(ref) == text.strip()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "names nothing"),
        ("@3", "names nothing"),
        ("wine@", "nothing after '@'"),
        ("wine@1@2", "more than one '@'"),
        ("wine@0", "versions start at 1"),
        ("wine@Prod", "neither a version number nor an alias"),
        ("wine@prod_1", "neither a version number nor an alias"),
        ("wi ne@3", "not a valid name"),
        ("wine/x", "not a valid name"),
    ],
)
def test_malformed_model_refs_say_what_was_expected(text, complaint):
    with pytest.raises(RefError, match=complaint):
        parse_model_ref(text)


def test_a_version_can_be_required():
    assert parse_model_ref("wine@3", require_version=True) == ModelRef("wine", version=3)
    with pytest.raises(RefError, match=r"gives no version; expected NAME@VERSION, e\.g\. wine@3"):
        parse_model_ref("wine", require_version=True)
    with pytest.raises(RefError, match="not a version number"):
        parse_model_ref("wine@production", require_version=True)


def test_dataset_refs_take_a_version_or_a_sha256():
    assert parse_dataset_ref("wine") == DatasetRef("wine")
    assert parse_dataset_ref("wine@4").selector() == {"version": 4}
    assert parse_dataset_ref(f"wine@{SHA}").selector() == {"sha256": SHA}
    assert parse_dataset_ref(f"wine@{SHA.upper()}").sha256 == SHA
    with pytest.raises(RefError, match="neither a version number nor a sha256"):
        parse_dataset_ref("wine@latest")
    with pytest.raises(RefError, match="versions start at 1"):
        parse_dataset_ref("wine@0")


def test_labels_are_key_value_pairs():
    assert parse_labels(["source=warehouse", "run=12", "empty=", "eq=a=b"]) == {
        "source": "warehouse",
        "run": "12",
        "empty": "",
        "eq": "a=b",
    }
    assert parse_labels(["k=1", "k=2"]) == {"k": "2"}
    for bad in ("novalue", "=v"):
        with pytest.raises(RefError, match="is not KEY=VALUE"):
            parse_labels([bad])
