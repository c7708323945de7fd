"""The onnxruntime serving runtime on small graphs built here: the contract it checks, what a model's
metadata says about NaN."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from services.inference.runtime import OnnxRuntime


def tiny_classifier(features: int = 3, classes: int = 2, *, allow_nan: bool = False, seed: int = 0) -> bytes:
    """A linear softmax classifier by the platform's contract: `input` [-1, F] → `probabilities`
    [-1, C] and `label` [-1]."""
    rng = np.random.default_rng(seed)
    weights = helper.make_tensor(
        "weights", TensorProto.FLOAT, [features, classes], rng.normal(size=(features, classes)).ravel()
    )
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [classes], rng.normal(size=classes))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "weights"], ["scores"]),
            helper.make_node("Add", ["scores", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", features])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]),
        ],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if allow_nan:
        helper.set_model_props(model, {"allow_nan": "true"})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_a_model_takes_nan_only_when_its_metadata_says_so():
    runtime = OnnxRuntime(provider="cpu", warmup_runs=1)
    plain = runtime.load(
        tiny_classifier(), name="plain", task="classification", feature_count=3, class_count=2
    )
    taking = runtime.load(
        tiny_classifier(allow_nan=True), name="nan", task="classification", feature_count=3, class_count=2
    )
    assert plain.allow_nan is False and taking.allow_nan is True
    answer = plain.run(np.ones((2, 3), np.float32))
    assert answer["probabilities"].shape == (2, 2) and answer["label"].shape == (2,)
