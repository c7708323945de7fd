"""mlops_client.to_onnx: scikit-learn (skl2onnx), LightGBM (onnxmltools) and PyTorch (torch.onnx) models
become ONNX bytes with one float input `input` [-1, F], whose predictions match the library's own."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from mlops_client import InvalidArgument, to_onnx
from mlops_client.convert import library_of
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@pytest.fixture(scope="module")
def wine():
    features, target = load_wine(return_X_y=True)
    return features.astype(np.float32), target


def _session(data: bytes) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])


def _single_float_input(data: bytes, features: int) -> None:
    graph = onnx.load_from_string(data).graph
    assert [item.name for item in graph.input] == ["input"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and dims[1].dim_value == features  # batch left free
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_a_scikit_learn_pipeline_converts_and_predicts_the_same(wine):
    features, target = wine
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(features, target)
    data = to_onnx(model)
    _single_float_input(data, features.shape[1])
    labels = _session(data).run(None, {"input": features})[0]
    assert (labels == model.predict(features)).mean() > 0.99


def test_a_lightgbm_classifier_converts_and_predicts_the_same(wine):
    import lightgbm

    features, target = wine
    model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(features, target)
    data = to_onnx(model, sample=features[:5])
    _single_float_input(data, features.shape[1])
    labels = _session(data).run(None, {"input": features})[0]
    assert (labels == model.predict(features)).mean() > 0.99


def test_a_torch_module_exports_with_a_free_batch_dimension(wine):
    import torch

    features, _ = wine
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(13, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3), torch.nn.Softmax(1)
    )
    data = to_onnx(module, sample=features[:1], output_names=["probabilities"])
    _single_float_input(data, features.shape[1])
    session = _session(data)
    assert [item.name for item in session.get_outputs()] == ["probabilities"]
    got = session.run(None, {"input": features})[0]
    with torch.no_grad():
        want = module(torch.as_tensor(features)).numpy()
    assert got.shape == (len(features), 3) and np.allclose(got, want, atol=1e-5)
    assert module.training  # left as it was found


def test_onnx_given_as_bytes_a_file_or_a_proto_passes_through(wine, tmp_path):
    features, target = wine
    data = to_onnx(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(features, target))
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    proto = onnx.load_from_string(data)
    assert library_of(proto) == "onnx"
    assert to_onnx(data) == data and to_onnx(path) == data and to_onnx(str(path)) == data
    assert to_onnx(proto) == proto.SerializeToString()


def test_what_cannot_be_converted_says_what_can():
    with pytest.raises(
        InvalidArgument, match=r"cannot make ONNX of a builtins\.dict.*scikit-learn, LightGBM"
    ):
        to_onnx({"weights": [1, 2]})
    with pytest.raises(InvalidArgument, match="no model file"):
        to_onnx("/nonexistent/model.onnx")
    import torch

    with pytest.raises(InvalidArgument, match="pass sample="):
        to_onnx(torch.nn.Linear(2, 1))
