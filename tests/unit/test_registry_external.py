"""Models registered from outside and files of runs: the registry's pure logic, without a server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.errors import InvalidArgument
from mlops.events.v1 import common_pb2
from mlops.profile import ReferenceProfile
from mlops.registry.v1 import registry_pb2 as pb
from services.registry import profiling
from services.registry.core.artifacts import check_path
from services.registry.core.external import default_spec, trained_event
from services.registry.core.runs import check_creation, updated, with_artifact, with_source
from services.registry.core.specs import checked_spec
from services.registry.core.transfer import MAX_CHUNK, checked_digest, chunks_of, receive


async def _stream(*parts):
    for part in parts:
        yield part


def _header(**fields) -> pb.RegisterModelRequest:
    return pb.RegisterModelRequest(header=pb.RegisterModelRequest.Header(model="wine", **fields))


def _chunk(data: bytes) -> pb.RegisterModelRequest:
    return pb.RegisterModelRequest(chunk=data)


async def test_a_stream_gives_its_header_and_the_chunks_joined():
    header, data = await receive(
        _stream(_header(file_name="m.onnx"), _chunk(b"ab"), _chunk(b"cd")), what="RegisterModel", limit=10
    )
    assert header.file_name == "m.onnx"
    assert data == b"abcd"


@pytest.mark.parametrize(
    ("parts", "says"),
    [
        ((), "first message of RegisterModel must be the header"),
        ((_chunk(b"x"),), "first message of RegisterModel must be the header"),
        ((_header(), _header()), "only the first message may be a header"),
        ((_header(), _chunk(b"123456"), _chunk(b"78901")), "larger than the"),
    ],
)
async def test_a_stream_out_of_order_or_too_large_is_refused_with_the_reason(parts, says):
    with pytest.raises(InvalidArgument, match=says):
        await receive(_stream(*parts), what="RegisterModel", limit=10)


async def test_a_chunk_over_4_mib_is_refused():
    with pytest.raises(InvalidArgument, match=r"chunk of 4\.0 MiB is larger"):
        await receive(
            _stream(_header(), _chunk(b"x" * (MAX_CHUNK + 1))), what="RegisterModel", limit=MAX_CHUNK * 4
        )


def test_the_digest_is_checked_against_what_the_header_announced():
    digest = hashlib.sha256(b"abc").hexdigest()
    assert checked_digest(b"abc", size=3, sha256=digest, name="m.onnx") == digest
    assert checked_digest(b"abc", size=0, sha256="", name="m.onnx") == digest
    with pytest.raises(InvalidArgument, match="4 bytes arrived, the header announced 3"):
        checked_digest(b"abcd", size=3, sha256="", name="m.onnx")
    with pytest.raises(InvalidArgument, match="hash to sha256"):
        checked_digest(b"abd", size=3, sha256=digest, name="m.onnx")
    with pytest.raises(InvalidArgument, match=r"m\.onnx is empty"):
        checked_digest(b"", size=0, sha256="", name="m.onnx")


async def test_a_download_is_cut_in_mib_chunks_and_the_first_says_what_the_whole_is():
    data = bytes(range(256)) * 9000  # 2.2 MiB
    chunks = [c async for c in chunks_of(data, uri="s3://b/k", sha256="f" * 64)]
    assert [len(c.data) for c in chunks] == [1 << 20, 1 << 20, len(data) - (2 << 20)]
    assert (chunks[0].size_bytes, chunks[0].uri) == (len(data), "s3://b/k")
    assert not chunks[1].sha256
    assert b"".join(c.data for c in chunks) == data


def test_an_empty_file_still_downloads_as_one_chunk():
    async def collect():
        return [c async for c in chunks_of(b"", uri="s3://b/k", sha256="e" * 64)]

    import asyncio

    assert [c.size_bytes for c in asyncio.run(collect())] == [0]


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../b", "a//b", "a/./b", "plots/lo ss.png"])
def test_a_run_artifact_path_that_could_escape_or_is_odd_is_refused(path):
    with pytest.raises(InvalidArgument, match="artifact path"):
        check_path(path)


def test_a_run_artifact_path_splits_into_folder_and_name():
    assert check_path("plots/loss.png") == ("plots", "loss.png")
    assert check_path("model.onnx") == ("", "model.onnx")


def test_update_run_adds_params_once_and_sets_and_removes_tags():
    run = pb.Run(run_id="r", params={"lr": "0.1"}, tags={"a": "1", "b": "2"})
    run = updated(
        run, pb.UpdateRunRequest(params={"lr": "0.1", "depth": "3"}, set_tags={"c": "3"}, remove_tags=["a"])
    )
    assert dict(run.params) == {"lr": "0.1", "depth": "3"}
    assert dict(run.tags) == {"b": "2", "c": "3"}
    with pytest.raises(InvalidArgument, match=r"'lr' is '0\.1' already"):
        updated(run, pb.UpdateRunRequest(params={"lr": "0.2"}))


def test_a_run_artifact_replaces_the_file_at_its_path_and_the_same_file_is_a_no_op():
    run = pb.Run(run_id="r")
    first = pb.RunArtifact(path="m.onnx", sha256="a" * 64)
    assert with_artifact(run, first)
    assert not with_artifact(run, pb.RunArtifact(path="m.onnx", sha256="a" * 64))
    assert with_artifact(run, pb.RunArtifact(path="m.onnx", sha256="b" * 64))
    assert [a.sha256 for a in run.artifacts] == ["b" * 64]


def test_runs_have_a_source_the_trainer_by_default():
    assert with_source(pb.Run()).source == "trainer"
    check_creation(pb.CreateRunRequest(model="notebook-experiments", source="client"))
    with pytest.raises(InvalidArgument, match="source must be one of trainer, client"):
        check_creation(pb.CreateRunRequest(model="x", source="laptop"))


def test_the_default_spec_of_an_outside_model_is_valid_and_not_trained_here():
    signature = pb.ModelSignature(task="classification")
    spec = checked_spec(default_spec(model="wine", dataset="wine", label="target", signature=signature))
    assert spec.spec.training.external
    assert (spec.spec.dataset, spec.spec.label, spec.spec.task) == ("wine", "target", "classification")
    assert spec.spec.gate.metric == "accuracy"


def test_model_trained_of_an_outside_version_says_external():
    record = pb.ModelVersion(
        model="wine",
        version=3,
        dataset="wine",
        dataset_version=2,
        artifact_uri="s3://b/models/wine/x/model.onnx",
        signature=pb.ModelSignature(task="classification", feature_names=["a"], class_labels=["0", "1"]),
        origin="external",
    )
    event = trained_event(record)
    assert event.trigger == common_pb2.TRAINING_TRIGGER_EXTERNAL
    assert (event.version, event.task, list(event.class_labels)) == (3, "classification", ["0", "1"])


def _wine(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    path = tmp_path / "wine.csv"
    frame.to_csv(path, index=False)
    return frame, path


def test_a_scikit_learn_model_is_profiled_on_its_data_set(tmp_path):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    frame, path = _wine(tmp_path)
    x = frame.drop(columns="target").to_numpy(dtype=np.float32)
    model = LogisticRegression(max_iter=2000).fit(x, frame["target"])
    onnx_bytes = to_onnx(model, x[:1]).SerializeToString()
    judged = profiling.judge(onnx_bytes, path, "csv", "target", max_rows=100)
    assert judged.signature.task == "classification"
    assert list(judged.signature.class_labels) == ["0", "1", "2"]
    profile = ReferenceProfile.from_json(judged.profile_json)
    assert profile.row_count == 100  # sampled
    assert profile.feature_names == [c for c in frame.columns if c != "target"]
    assert sum(profile.prediction.class_counts) == 100


def test_a_lightgbm_regressor_is_profiled_on_its_values(tmp_path):
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    frame, path = _wine(tmp_path)
    x = frame.drop(columns=["alcohol"]).to_numpy(dtype=np.float32)
    model = lightgbm.LGBMRegressor(n_estimators=10, verbose=-1).fit(x, frame["alcohol"])
    onnx_bytes = convert_lightgbm(
        model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))], target_opset=15
    ).SerializeToString()
    judged = profiling.judge(onnx_bytes, path, "csv", "alcohol", max_rows=1000)
    assert judged.signature.task == "regression"
    profile = ReferenceProfile.from_json(judged.profile_json)
    assert profile.prediction.kind == "value"
    assert profile.row_count == len(frame)


def test_bytes_that_are_not_onnx_are_refused_naming_the_problem(tmp_path):
    _, path = _wine(tmp_path)
    with pytest.raises(InvalidArgument, match="ONNX"):
        profiling.judge(b"not a model at all", path, "csv", "target", max_rows=100)
