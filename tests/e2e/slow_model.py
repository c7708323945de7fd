"""A slow twin of a model, for the rollback test: the same graph, answering exactly what the original
answers, with a busy loop in front of it so that every call takes about a tenth of a second (the
time depends on the CPU; `per_call_seconds` measures it).

The loop runs `iterations` steps of `state = tanh(state @ weights)` on a `width × width` state seeded
from the sum of the input, so the work depends on every call's rows and cannot be folded away when
the session is built. Its result is multiplied by zero and added to the input before the original
graph reads it: the answers do not change, only the time they take.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

PREFIX = "slow_"


def slowed(model_bytes: bytes, *, iterations: int, width: int = 64) -> bytes:
    """`model_bytes` (an ONNX model with one input) with the busy loop in front of its graph."""
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"the model must have one input, it has {[value.name for value in inputs]}")
    source = inputs[0].name
    gated = f"{PREFIX}{source}"
    for node in graph.node:
        node.input[:] = [gated if name == source else name for name in node.input]

    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["state_in", f"{PREFIX}weights"], ["product"]),
            helper.make_node("Tanh", ["product"], ["state_out"]),
            helper.make_node("Identity", ["condition_in"], ["condition_out"]),
        ],
        f"{PREFIX}body",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("condition_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [width, width]),
        ],
        [
            helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [width, width]),
        ],
    )
    # The weights permute the state's columns: the product keeps its size and tanh shrinks it only
    # slowly, so no step meets denormal numbers (slow on many CPUs) and the time does not depend on
    # the input.
    weights = np.roll(np.eye(width, dtype=np.float32), 1, axis=1)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(iterations, dtype=np.int64), f"{PREFIX}iterations"),
            numpy_helper.from_array(np.array(True), f"{PREFIX}condition"),
            numpy_helper.from_array(weights, f"{PREFIX}weights"),
            numpy_helper.from_array(np.array([width, width], dtype=np.int64), f"{PREFIX}shape"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), f"{PREFIX}zero"),
        ]
    )
    front = [
        helper.make_node("ReduceSum", [source], [f"{PREFIX}seed"], keepdims=0),
        helper.make_node("Tanh", [f"{PREFIX}seed"], [f"{PREFIX}bounded"]),
        helper.make_node("Expand", [f"{PREFIX}bounded", f"{PREFIX}shape"], [f"{PREFIX}start"]),
        helper.make_node(
            "Loop",
            [f"{PREFIX}iterations", f"{PREFIX}condition", f"{PREFIX}start"],
            [f"{PREFIX}end"],
            body=body,
        ),
        helper.make_node("ReduceSum", [f"{PREFIX}end"], [f"{PREFIX}total"], keepdims=0),
        helper.make_node("Mul", [f"{PREFIX}total", f"{PREFIX}zero"], [f"{PREFIX}nothing"]),
        helper.make_node("Add", [source, f"{PREFIX}nothing"], [gated]),
    ]
    for index, node in enumerate(front):
        graph.node.insert(index, node)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def session(model_bytes: bytes) -> ort.InferenceSession:
    """A one-thread CPU session, as the inference server makes by default."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def per_call_seconds(model_bytes: bytes, row: np.ndarray, calls: int = 2) -> float:
    """The fastest of `calls` single-row calls, after one call to warm the session up."""
    runner = session(model_bytes)
    feed = {runner.get_inputs()[0].name: np.asarray(row, dtype=np.float32).reshape(1, -1)}
    runner.run(None, feed)
    fastest = float("inf")
    for _ in range(calls):
        started = time.perf_counter()
        runner.run(None, feed)
        fastest = min(fastest, time.perf_counter() - started)
    return fastest
