"""Request tensors → a version's graph inputs, and its outputs → answer tensors, whatever the transport.

A transport (gRPC's `codec`, the REST routes) wraps each request tensor in something with the
`Tensor` shape, whose values it reads only when asked for a number of them, and calls `feed`; it
encodes the `Answer`s that `answers` makes. The rules (see `interface`): each graph input is sent
whole, by its name, or as one tensor per column ([-1] or [-1, 1]) named after the column. Numbers are
converted to the input's type, refusing what has no place there (NaN unless the model takes it,
infinities, values out of range); a text input takes BYTES; a numeric input takes a text column as its
code in the version's vocabulary (-1 when unseen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mlops.errors import InvalidArgument, ResourceExhausted
from services.inference.interface import InputPlan
from services.inference.routes import Serving
from services.inference.runtime import Rows

NUMERIC = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "FP16": np.dtype("<f2"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
}
DATATYPE_OF = {dtype: name for name, dtype in NUMERIC.items()}
ACCEPTED = "FP32, FP64, FP16, INT8-64, UINT8-64 or BOOL"


class Limits:
    def __init__(self, *, max_rows: int, max_bytes: int) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes


class Tensor(Protocol):
    """One request tensor as a transport hands it over."""

    name: str
    datatype: str
    shape: Sequence[int]

    def numbers(self, count: int) -> np.ndarray:
        """Its `count` values, flat, in its datatype; an error naming the problem when it is no numeric
        datatype or does not hold `count` values."""
        ...

    def texts(self, count: int) -> list[bytes]:
        """Its `count` BYTES elements."""
        ...


@dataclass(frozen=True)
class Answer:
    """One output tensor: numbers in its datatype (C order), or BYTES elements."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]


def shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def where(flat: int, shape) -> str:
    """Where a flat position lies in the tensor as the caller shaped it: "index 3" or "[0, 2]"."""
    if len(shape) == 1:
        return f"index {flat}"
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(flat, tuple(shape))) + "]"


def _text_of(value) -> str:
    value = value.item()
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_rows(rows: int, limits: Limits) -> int:
    if rows == 0:
        raise InvalidArgument("the request has no rows (the first dimension is 0)")
    if rows > limits.max_rows:
        raise ResourceExhausted(f"the request has {rows} rows; this server takes at most {limits.max_rows}")
    return rows


def for_model(tensor: Tensor, values: np.ndarray, dtype: np.dtype, allow_nan: bool = False) -> np.ndarray:
    """`values` (flat, in the declared datatype) converted to the input's type, or an error naming the
    first value that has no place there: NaN (unless the model takes it), an infinity, or a number
    its type cannot hold. One vectorised check on the common path."""
    if dtype.kind in "iu":
        return _for_integer(tensor, values, dtype)
    if dtype.kind == "b":
        return values.astype(dtype)
    if values.dtype == dtype:
        converted = values
    else:
        with np.errstate(over="ignore"):  # a value too large for the model's type is reported below
            converted = values.astype(dtype)
    finite = np.isfinite(converted)
    if finite.all():
        return converted
    bad = np.isinf(converted) if allow_nan else ~finite
    if not bad.any():
        return converted
    flat = int(np.argmax(bad))
    source = values[flat]
    at = where(flat, tensor.shape)
    if values.dtype.kind == "f" and np.isnan(source):
        raise InvalidArgument(f"input {tensor.name!r}: NaN at {at}; this model does not take NaN")
    if values.dtype.kind == "f" and np.isinf(source):
        raise InvalidArgument(
            f"input {tensor.name!r}: {_text_of(source)} at {at}; infinite values are not accepted"
        )
    raise InvalidArgument(
        f"input {tensor.name!r}: value {_text_of(source)} at {at} is outside the model's "
        f"{DATATYPE_OF.get(dtype, dtype.name)} input"
    )


def _for_integer(tensor: Tensor, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values)
        if bad.any():
            flat = int(np.argmax(bad))
            raise InvalidArgument(
                f"input {tensor.name!r}: {_text_of(values[flat])} at {where(flat, tensor.shape)}; "
                "this model takes integers"
            )
    if values.dtype != dtype and values.size and values.dtype.kind != "b":
        outside = (values < info.min) | (values > info.max)
        if outside.any():
            flat = int(np.argmax(outside))
            raise InvalidArgument(
                f"input {tensor.name!r}: value {_text_of(values[flat])} at {where(flat, tensor.shape)} "
                f"is outside the model's {DATATYPE_OF.get(dtype, dtype.name)} input ({info.min}..{info.max})"
            )
    return values if values.dtype == dtype else values.astype(dtype)


def expected(serving: Serving) -> str:
    interface = serving.interface
    wholes = " and ".join(f"{p.name!r} {shape_text(p.shape)} {p.datatype}" for p in interface.inputs)
    columns = ", ".join(repr(c) for c in interface.column_of if c not in interface.by_input)
    if not columns:
        return f"send {wholes}"
    return f"send {wholes}, or one tensor per feature ([-1] or [-1, 1]) named {columns}"


# --- request → graph inputs ----------------------------------------------------------------------


def feed(serving: Serving, tensors: Sequence[Tensor], limits: Limits) -> Rows:
    """The graph's inputs from the request's tensors: the one input's array, or the inputs by name."""
    interface = serving.interface
    if not tensors:
        raise InvalidArgument(f"the request has no inputs; {expected(serving)}")
    single = interface.single
    if single is not None and len(tensors) == 1 and tensors[0].name == single.name:
        return _whole(tensors[0], single, serving, limits, None)
    whole: dict[str, np.ndarray] = {}
    columns: dict[str, np.ndarray] = {}
    rows: int | None = None
    for tensor in tensors:
        name = tensor.name
        if name in whole or name in columns:
            raise InvalidArgument(f"input {name!r} was sent twice")
        plan = interface.by_input.get(name)
        if plan is not None:
            whole[name] = _whole(tensor, plan, serving, limits, rows)
            rows = whole[name].shape[0]
            continue
        located = interface.column_of.get(name)
        if located is None:
            raise InvalidArgument(f"unknown input {name!r}; {expected(serving)}")
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 0:
            raise InvalidArgument(
                f"input {name!r} has shape {shape_text(shape)}; a feature is [-1] or [-1, 1]"
            )
        if rows is None:
            rows = check_rows(shape[0], limits)
        elif shape[0] != rows:
            raise InvalidArgument(f"input {name!r} has {shape[0]} rows; the inputs before it have {rows}")
        columns[name] = _values(tensor, located[0], rows, serving, per_column=True)
    missing = []
    for plan in interface.inputs:
        if plan.name in whole:
            if any(c in columns for c in plan.columns):
                raise InvalidArgument(
                    f"input {plan.name!r} was sent with other inputs; send either {plan.name!r} alone "
                    "or one tensor per feature"
                )
        else:
            missing += [c for c in plan.columns if c not in columns] or ([] if plan.columns else [plan.name])
    if missing:
        raise InvalidArgument(
            f"missing input{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}; "
            f"{expected(serving)}"
        )
    assert rows is not None
    arrays = {}
    for plan in interface.inputs:
        if plan.name in whole:
            arrays[plan.name] = whole[plan.name]
            continue
        matrix = np.empty((rows, plan.width), dtype=plan.dtype)
        for index, column in enumerate(plan.columns):
            matrix[:, index] = columns[column]
        arrays[plan.name] = matrix.reshape(rows) if plan.rank == 1 else matrix
    return arrays[single.name] if single is not None else arrays


def _whole(tensor: Tensor, plan: InputPlan, serving: Serving, limits: Limits, rows: int | None) -> np.ndarray:
    shape = tensor.shape
    name = tensor.name
    if plan.rank == 1 or plan.width == 1:
        fits = len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)
        wanted = "[-1] or [-1, 1]"
    else:
        fits = len(shape) == 2 and (shape[1] == plan.width or not plan.width)
        wanted = f"[-1, {plan.width}] (rows × the features {', '.join(plan.columns)})"
    if not fits or shape[0] < 0:
        raise InvalidArgument(f"input {name!r} has shape {shape_text(shape)}; expected {wanted}")
    if rows is None:
        rows = check_rows(shape[0], limits)
    elif shape[0] != rows:
        raise InvalidArgument(f"input {name!r} has {shape[0]} rows; the inputs before it have {rows}")
    width = shape[1] if len(shape) == 2 else 1
    values = _values(tensor, plan, rows * width, serving, per_column=False)
    return values.reshape(rows) if plan.rank == 1 else values.reshape(rows, width)


def _values(tensor: Tensor, plan: InputPlan, count: int, serving: Serving, *, per_column: bool) -> np.ndarray:
    name = tensor.name
    if plan.text:
        if tensor.datatype != "BYTES":
            raise InvalidArgument(
                f"input {name!r} has datatype {tensor.datatype!r}; the model takes text there: send BYTES"
            )
        return np.array([_decoded(value, name) for value in tensor.texts(count)], dtype=object)
    if tensor.datatype == "BYTES" and (per_column or plan.width == 1):
        vocabulary = serving.categories.get(name) or serving.categories.get(
            plan.columns[0] if plan.columns else ""
        )
        if vocabulary is None:
            raise InvalidArgument(
                f"input {name!r} has datatype BYTES but is a numeric feature of "
                f"{serving.model} v{serving.spec.version}; expected {ACCEPTED}"
            )
        codes = {value.encode(): float(code) for code, value in enumerate(vocabulary)}
        return np.array([codes.get(value, -1.0) for value in tensor.texts(count)], dtype=plan.dtype)
    allow_nan = bool(getattr(serving.loaded, "allow_nan", False))
    return for_model(tensor, tensor.numbers(count), plan.dtype, allow_nan)


def _decoded(value: bytes, name: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise InvalidArgument(f"input {name!r}: a BYTES element is not UTF-8 text") from None


# --- outputs → answer tensors --------------------------------------------------------------------


def requested_outputs(wanted: Sequence[str], serving: Serving) -> tuple[str, ...]:
    """The output names to answer with: those asked for, or all of the model's."""
    names = serving.interface.output_names
    if not wanted:
        return names
    for name in wanted:
        if name not in names:
            raise InvalidArgument(
                f"unknown output {name!r}; {serving.model} v{serving.spec.version} answers {', '.join(names)}"
            )
    return tuple(wanted)


def label_strings(serving: Serving, indices: np.ndarray) -> list[str]:
    labels = serving.label_values
    count = len(labels)
    return [labels[i] if 0 <= i < count else str(i) for i in indices.tolist()]


def answers(serving: Serving, outputs: dict[str, np.ndarray], names: Sequence[str]) -> list[Answer]:
    plans = serving.interface.by_output
    result = []
    for name in names:
        plan = plans[name]
        value = outputs[name]
        shape = list(value.shape)
        if plan.class_index:
            data: np.ndarray | list[bytes] = [
                text.encode() for text in label_strings(serving, value.reshape(-1))
            ]
            result.append(Answer(name, "BYTES", shape, data))
        elif plan.datatype == "BYTES":
            data = [v if isinstance(v, bytes) else str(v).encode() for v in value.reshape(-1).tolist()]
            result.append(Answer(name, "BYTES", shape, data))
        else:
            dtype = NUMERIC.get(plan.datatype, NUMERIC["FP32"])
            array = (
                value
                if value.dtype == dtype and value.flags.c_contiguous
                else np.ascontiguousarray(value, dtype)
            )
            result.append(Answer(name, DATATYPE_OF[dtype], shape, array))
    return result
