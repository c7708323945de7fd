"""Scoring ONNX models that follow the contract, on the held-out split, without any service.

The models are written with `onnx.helper` (a linear layer, softmax and argmax), so that these tests
need neither torch nor a trained network.
"""

from __future__ import annotations

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlops.errors import InvalidArgument
from mlops.registry.v1 import registry_pb2
from mlops.tabular import TEST, assign_splits, resolve_schema
from services.evaluator.contenders import Contender, evaluation_id_for, held_out_rows, score_contender
from services.evaluator.scoring import OnnxModel, legacy_signature
from services.evaluator.settings import EvaluatorSettings


def linear_classifier(weights: np.ndarray, bias: np.ndarray, *, input_name: str = "input") -> bytes:
    features, classes = weights.shape
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        ],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", features])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def linear_regressor(weights: np.ndarray, bias: float) -> bytes:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["y0"]),
            helper.make_node("Add", ["y0", "B"], ["prediction"]),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", len(weights)])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch"])],
        [
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(np.array(bias, dtype=np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture
def table(tmp_path):
    """Two numeric features, one text feature, a label that is a function of the first feature."""
    rng = np.random.default_rng(0)
    n = 400
    a = rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "a": a,
            "b": rng.normal(size=n),
            "colour": rng.choice(["red", "blue"], size=n),
            "target": np.where(a > 0, "yes", "no"),
        }
    )
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path, frame


def spec_body(**kwargs) -> registry_pb2.ModelSpecBody:
    body = registry_pb2.ModelSpecBody(task="classification", label="target", **kwargs)
    body.training.validation_fraction = 0.15
    body.training.test_fraction = 0.25
    return body


SETTINGS = EvaluatorSettings(execution_provider="cpu", latency_sample_size=30, latency_warmup=3)


def test_held_out_rows_are_the_test_split_of_mlops_tabular(table):
    path, frame = table
    assert len(pd.read_csv(path)) == len(frame)
    held_out = held_out_rows(path, "csv", spec_body(slices=["colour"]), slice_max_values=10, slice_bins=4)
    schema = resolve_schema(
        task="classification", label="target", features=[], slices=["colour"], frame=pd.read_csv(path)
    )
    splits = assign_splits(pd.read_csv(path), schema, validation_fraction=0.15, test_fraction=0.25)
    expected = pd.read_csv(path)[splits == TEST].reset_index(drop=True)
    pd.testing.assert_frame_equal(held_out.rows, expected)
    assert 50 < len(held_out.rows) < 150
    assert held_out.schema.features == ["a", "b"], "a slice column is not a feature unless listed"
    assert sorted(s.value for s in held_out.slices) == ["blue", "red"]
    assert sum(len(s.rows) for s in held_out.slices) == len(held_out.rows)


def test_slice_columns_must_exist(table):
    path, _ = table
    with pytest.raises(InvalidArgument, match="slice columns missing: shape"):
        held_out_rows(path, "csv", spec_body(slices=["shape"]), slice_max_values=10, slice_bins=4)


def test_a_good_and_a_bad_model_are_scored_on_the_same_rows_each_in_its_own_feature_order(table):
    path, _ = table
    body = spec_body(slices=["colour"], features=["a", "b", "colour"])  # a slice that is also a feature
    held_out = held_out_rows(path, "csv", body, slice_max_values=10, slice_bins=4)
    # classes sorted as mlops.tabular sorts them: ["no", "yes"]; "yes" when a > 0
    good = linear_classifier(np.array([[-5.0, 5.0], [0, 0], [0, 0]]), np.zeros(2))
    card = score_contender(
        good,
        Contender("challenger", 2, "", "", ["a", "b", "colour"], ["no", "yes"]),
        held_out,
        SETTINGS,
        measure_latency=True,
    )
    assert card.metrics["accuracy"] == pytest.approx(1.0)
    assert card.metrics["roc_auc"] == pytest.approx(1.0)
    assert 0 < card.latency_p50_ms <= card.latency_p99_ms
    assert card.size_bytes == len(good)
    assert card.provider == "CPUExecutionProvider"
    assert set(card.slices) == {("colour", "blue"), ("colour", "red")}

    # the same good model with its features in another order, as an older champion might have them
    reordered = linear_classifier(np.array([[0, 0], [-5.0, 5.0], [0, 0]]), np.zeros(2))
    same = score_contender(
        reordered,
        Contender("champion", 1, "", "", ["colour", "a", "b"], ["no", "yes"]),
        held_out,
        SETTINGS,
        measure_latency=False,
    )
    assert same.metrics == pytest.approx(card.metrics)
    assert same.latency_p99_ms == 0.0

    bad = linear_classifier(np.array([[0, 0], [-5.0, 5.0], [0, 0]]), np.zeros(2))  # looks at noise
    worse = score_contender(
        bad,
        Contender("challenger", 3, "", "", ["a", "b", "colour"], ["no", "yes"]),
        held_out,
        SETTINGS,
        measure_latency=False,
    )
    assert worse.metrics["accuracy"] < 0.75


def test_a_model_that_does_not_know_every_class_cannot_be_scored(table):
    path, _ = table
    held_out = held_out_rows(path, "csv", spec_body(), slice_max_values=10, slice_bins=4)
    model = linear_classifier(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(InvalidArgument, match="class labels the model does not know: yes"):
        score_contender(
            model,
            Contender("champion", 1, "", "", ["a", "b", "colour"], ["no", "maybe"]),
            held_out,
            SETTINGS,
            measure_latency=False,
        )


def legacy(task: str, n_features: int, n_classes: int = 0) -> registry_pb2.ModelSignature:
    return legacy_signature(task, [f"f{i}" for i in range(n_features)], [f"c{i}" for i in range(n_classes)])


def test_the_contract_is_checked_with_messages_that_name_the_problem():
    weights, bias = np.zeros((3, 2)), np.zeros(2)
    with pytest.raises(InvalidArgument, match=r"expected one input 'input'.*got inputs \['x'\]"):
        OnnxModel(linear_classifier(weights, bias, input_name="x"), signature=legacy("classification", 3, 2))
    with pytest.raises(InvalidArgument, match="the signature's 4 features need \\[-1, 4\\]"):
        OnnxModel(linear_classifier(weights, bias), signature=legacy("classification", 4, 2))
    with pytest.raises(InvalidArgument, match="has 2 columns but the signature lists 3 class labels"):
        OnnxModel(linear_classifier(weights, bias), signature=legacy("classification", 3, 3))
    with pytest.raises(InvalidArgument, match="must have outputs \\['prediction'\\]"):
        OnnxModel(linear_classifier(weights, bias), signature=legacy("regression", 3))
    with pytest.raises(InvalidArgument, match="cannot load the model"):
        OnnxModel(b"not a model", signature=legacy("regression", 3))


def test_a_signature_that_does_not_match_the_graph_is_refused():
    model = linear_classifier(np.zeros((3, 2)), np.zeros(2), input_name="x")
    signature = registry_pb2.ModelSignature(
        inputs=[registry_pb2.TensorSpec(name="y", datatype="FP32", shape=[-1, 3], columns=["a", "b", "c"])],
        outputs=[registry_pb2.TensorSpec(name="probabilities", role="probabilities")],
        class_labels=["no", "yes"],
        task="classification",
    )
    with pytest.raises(InvalidArgument, match=r"inputs \['y'\] do not match the graph's \['x'\]"):
        OnnxModel(model, signature=signature)
    signature.inputs[0].name = "x"
    signature.outputs[0].role = ""
    with pytest.raises(InvalidArgument, match="needs an output with role label or probabilities"):
        OnnxModel(model, signature=signature)


def test_regression_predictions_come_back_flat():
    model = OnnxModel(
        linear_regressor(np.array([1.0, 2.0]), 0.5), signature=legacy("regression", 2), provider="cpu"
    )
    out = model.predict({"input": np.array([[1, 1], [0, 0], [2, 0]], dtype=np.float32)})
    assert out.values.tolist() == pytest.approx([3.5, 0.5, 2.5])


def test_evaluation_ids_are_stable_and_distinct():
    one = evaluation_id_for(model="m", version=2, spec_version=1, dataset_sha256="a" * 64)
    assert one == evaluation_id_for(model="m", version=2, spec_version=1, dataset_sha256="a" * 64)
    assert one != evaluation_id_for(model="m", version=2, spec_version=2, dataset_sha256="a" * 64)
    assert one != evaluation_id_for(model="m", version=3, spec_version=1, dataset_sha256="a" * 64)


def test_unlabelled_rows_are_left_out_of_the_held_out_rows(tmp_path, table):
    _, frame = table
    frame = frame.copy()
    frame.loc[::7, "target"] = None
    path = tmp_path / "partly-labelled.csv"
    frame.to_csv(path, index=False)
    held_out = held_out_rows(path, "csv", spec_body(), slice_max_values=10, slice_bins=4)
    assert held_out.rows["target"].notna().all()
    assert len(held_out.rows) > 30


def test_a_model_reads_text_features_with_its_own_vocabulary(tmp_path):
    """The data set now says blue/red (codes 0/1); the champion was trained when only red existed
    (red = 0). Encoded with its own vocabulary, every red row reads 0 and blue is unseen (-1)."""
    n = 200
    frame = pd.DataFrame(
        {"colour": ["red", "blue"] * (n // 2), "noise": np.arange(n) / n, "target": ["yes", "no"] * (n // 2)}
    )
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    body = spec_body(features=["colour", "noise"])
    held_out = held_out_rows(path, "csv", body, slice_max_values=10, slice_bins=4)
    assert held_out.schema.categorical == {"colour": ["blue", "red"]}
    # "yes" when the colour code is >= 0 (red under the champion's vocabulary), "no" for -1 (unseen blue).
    model = linear_classifier(np.array([[0.0, 10.0], [0.0, 0.0]]), np.array([0.0, 5.0]))
    champion = Contender(
        "champion", 1, "", "", ["colour", "noise"], ["no", "yes"], categories={"colour": ["red"]}
    )
    card = score_contender(model, champion, held_out, SETTINGS, measure_latency=False)
    assert card.metrics["accuracy"] == pytest.approx(1.0)
    with_data_vocabulary = Contender("champion", 1, "", "", ["colour", "noise"], ["no", "yes"])
    # Read with the data set's vocabulary instead, blue becomes 0 and every row reads "yes".
    wrong = score_contender(model, with_data_vocabulary, held_out, SETTINGS, measure_latency=False)
    assert wrong.metrics["accuracy"] == pytest.approx((held_out.rows["target"] == "yes").mean())
