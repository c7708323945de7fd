"""Content addresses: what a key may contain and how it is split."""

from __future__ import annotations

import pytest

from mlops.errors import InvalidArgument
from mlops.store.base import content_key, expected_sha256, split_content_address

SHA = "ab" * 32


def test_keys_are_namespace_sha_file():
    assert content_key("models/wine-quality", SHA, "model.onnx") == f"models/wine-quality/{SHA}/model.onnx"
    assert split_content_address(f"models/wine/{SHA}/model.onnx") == ("models/wine", SHA, "model.onnx")


@pytest.mark.parametrize("namespace", ["", "models/..", "models/a b", "/"])
def test_unsafe_namespaces_are_refused(namespace):
    with pytest.raises(InvalidArgument):
        content_key(namespace, SHA, "model.onnx")


def test_the_expected_checksum_defaults_to_the_address():
    assert expected_sha256(f"d/x/{SHA}/f.csv", None) == SHA
    assert expected_sha256("anything", SHA) == SHA
    with pytest.raises(InvalidArgument, match="not a content address"):
        expected_sha256("d/x/f.csv", None)
    with pytest.raises(InvalidArgument, match="not a lowercase hex sha256"):
        expected_sha256("d/x/f.csv", "ABC")
