"""An erroring twin of a model, for the bad-canary tests: the same graph, which fails every call whose
rows are not all zeros.

The inference server warms a model up on zero rows and refuses one that fails there, so a model that
always fails would never serve. This one reads the sum of the absolute values of the input: zero
gives index 0 into a one-element tensor (a valid Gather, whose value is then multiplied by zero and
added to the input, so the answers stay the original's), anything else gives an index far out of
range, which onnxruntime refuses at run time with an error naming the Gather.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PREFIX = "erroring_"
OUT_OF_RANGE = 1_000_000


def erroring(model_bytes: bytes) -> bytes:
    """`model_bytes` (an ONNX model with one input) with the failing Gather in front of its graph."""
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

    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0.0], dtype=np.float32), f"{PREFIX}table"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), f"{PREFIX}zero"),
            numpy_helper.from_array(np.array(OUT_OF_RANGE, dtype=np.int64), f"{PREFIX}far"),
        ]
    )
    front = [
        helper.make_node("Abs", [source], [f"{PREFIX}abs"]),
        helper.make_node("ReduceSum", [f"{PREFIX}abs"], [f"{PREFIX}sum"], keepdims=0),
        helper.make_node("Greater", [f"{PREFIX}sum", f"{PREFIX}zero"], [f"{PREFIX}nonzero"]),
        helper.make_node("Cast", [f"{PREFIX}nonzero"], [f"{PREFIX}flag"], to=TensorProto.INT64),
        helper.make_node("Mul", [f"{PREFIX}flag", f"{PREFIX}far"], [f"{PREFIX}index"]),
        helper.make_node("Gather", [f"{PREFIX}table", f"{PREFIX}index"], [f"{PREFIX}picked"], axis=0),
        helper.make_node("Mul", [f"{PREFIX}picked", f"{PREFIX}zero"], [f"{PREFIX}nothing"]),
        helper.make_node("Add", [source, f"{PREFIX}nothing"], [gated]),
    ]
    for index, node in enumerate(front):
        graph.node.insert(index, node)
    onnx.checker.check_model(model)
    return model.SerializeToString()
