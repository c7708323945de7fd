"""The inference log, the batcher and shadows for models of any signature: numeric and text features
logged apart, probabilities in class_labels order or the regression value, requests of one layout
merged and no others, a shadow fed the champion's columns. Real ONNX models built here; no server."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.inference.batching import Batcher
from services.inference.inference_log import _Entry, _messages
from services.inference.interface import build
from services.inference.runtime import OnnxRuntime
from services.inference.tensors import feed
from tests.unit import inference_outside_models as outside
from tests.unit.test_inference_signatures import LIMITS, serve, spec_of


class Column:
    """A request tensor of one column, as a transport hands it over."""

    def __init__(self, name: str, values: np.ndarray) -> None:
        self.name, self.values = name, np.asarray(values)
        self.shape = [len(self.values)]
        self.datatype = {"f": "FP32", "d": "FP64", "l": "INT64", "q": "INT64", "O": "BYTES"}[
            self.values.dtype.char
        ]

    def numbers(self, count: int) -> np.ndarray:
        return self.values

    def texts(self, count: int) -> list[bytes]:
        return [str(v).encode() for v in self.values]


def columns(model: outside.Outside, rows: slice = slice(None)) -> list[Column]:
    return [Column(name, model.rows[name][rows]) for name in model.feature_names]


async def logged(model: outside.Outside, count: int = 3):
    core = await serve(model)
    serving = core.route("m").serving
    rows = feed(serving, columns(model, slice(0, count)), LIMITS)
    outputs = await core.predict(core.route("m"), rows, request_id="r", arrived_ns=0)
    entry = _Entry(serving, "production", "req", 1_700_000_000_000_000_000, 0.0, rows, outputs, 50, "")
    messages, shed = await _messages([entry], 1.0, "server", max_bytes=1 << 20)
    assert not shed and len(messages) == 1
    return messages[0][1], outputs


async def test_text_features_are_logged_beside_the_numeric_ones():
    model = outside.per_column()
    message, outputs = await logged(model)
    assert list(message.feature_names) == ["petal_length", "petal_width", "count"]
    assert list(message.text_feature_names) == ["colour"]
    assert list(message.class_labels) == ["setosa", "versicolor", "virginica"]
    for row, record in enumerate(message.records):
        assert record.request_id == f"req/{row}"
        assert list(record.text_features) == [model.rows["colour"][row]]
        assert record.features[2] == model.rows["count"][row]
        np.testing.assert_allclose(record.outputs, outputs["output_probability"][row], rtol=1e-6)
        assert record.label == outputs["output_label"][row]


async def test_a_zipmap_classifier_logs_probabilities_and_its_class():
    model = outside.lightgbm()
    message, _ = await logged(model)
    assert list(message.feature_names) == list(model.feature_names) and not message.text_feature_names
    x = np.column_stack([model.rows[c] for c in model.feature_names])[:3]
    for row, record in enumerate(message.records):
        np.testing.assert_allclose(record.outputs, model.expected.predict_proba(x)[row], atol=1e-5)
        assert record.label == str(model.expected.predict(x)[row])
        assert not record.text_features


async def test_a_regressor_logs_its_value():
    model = outside.regressor()
    message, _ = await logged(model)
    assert not message.class_labels
    x = np.column_stack([model.rows[c] for c in model.feature_names])[:3]
    np.testing.assert_allclose([r.outputs[0] for r in message.records], model.expected.predict(x), rtol=1e-6)
    assert all(r.label == "" for r in message.records)


async def test_the_batcher_merges_only_requests_of_one_layout():
    calls: list[object] = []

    def run(rows):
        calls.append(rows)
        first = rows if isinstance(rows, np.ndarray) else next(iter(rows.values()))
        return {"out": np.arange(first.shape[0], dtype=np.float32)}

    batcher = Batcher(
        run, ThreadPoolExecutor(1), max_batch_size=64, max_wait_us=50_000, observe_batch=lambda n: None
    )
    text = {"a": np.ones((2, 1), np.float32), "b": np.array([["x"], ["y"]], dtype=object)}
    same = {"a": np.ones((3, 1), np.float32), "b": np.array([["z"]] * 3, dtype=object)}
    other = {"a": np.ones((1, 1), np.float64), "b": np.array([["w"]], dtype=object)}
    answers = await asyncio.gather(*(batcher.submit(rows) for rows in (text, same, other)))
    assert [len(a["out"]) for a in answers] == [2, 3, 1]
    sizes = sorted(len(call["a"]) for call in calls)  # type: ignore[index]
    assert sizes == [1, 5], f"the two FP32 requests share a call, the FP64 one does not: {sizes}"
    merged = next(call for call in calls if len(call["a"]) == 5)  # type: ignore[index]
    assert merged["b"].reshape(-1).tolist() == ["x", "y", "z", "z", "z"]  # type: ignore[index]


async def test_a_shadow_with_other_inputs_gets_the_same_columns():
    champion, challenger = outside.lightgbm(), outside.logistic()
    runtime = OnnxRuntime(provider="cpu", warmup_runs=1)
    lightgbm = runtime.load(champion.onnx, name="a", task="classification", feature_count=4, class_count=3)
    logistic = runtime.load(challenger.onnx, name="b", task="classification", feature_count=4, class_count=3)
    source = build(lightgbm, spec_of(champion))
    target = build(logistic, spec_of(challenger, 2))
    x = np.column_stack([champion.rows[c] for c in champion.feature_names])
    refed = target.refeed(x, source)
    assert isinstance(refed, np.ndarray) and refed.dtype == np.float32
    np.testing.assert_array_equal(refed, x)
    assert source.refeed(x, source) is x
    answer = target.run(logistic)(refed)
    np.testing.assert_allclose(answer["output_probability"], challenger.expected.predict_proba(x), atol=1e-5)
