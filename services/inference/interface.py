"""What one version takes and answers: its graph's inputs fed by the data set's columns, its outputs
with their roles, as requests, answers and the inference log read them.

Built once per version when it loads, from the graph (`LoadedModel.signature`, read from the ONNX
file itself), the registry's record of the version when there is one (its inputs' `columns`, its
outputs' `role`), and the desired state (`feature_names`, `class_labels`). A record made before
columns and roles existed is read the legacy way (`mlops.onnx_signature`): one input fed by every
feature, outputs `probabilities` / `label` / `prediction`.

Inputs. Each graph input carries some columns: a [-1, F] input several, a per-column input ([-1] or
[-1, 1]) one. A request sends each graph input whole, by its name, or each of its columns as a tensor
of its own named after the column. A text (string) input is fed text; a numeric input fed a text
column (the platform's MLPs) takes the column's code in the version's vocabulary.

Outputs. Answered under the graph's names and types, with two readings: a ZipMap (a list of dicts,
one per row) is the FP32 [N, C] tensor it stands for, columns in `class_labels` order; an integer
`label` with no class labels in the graph (a torch argmax, the platform's MLP) is an index into
`class_labels` and is answered as the class names (BYTES).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlops import onnx_signature as signatures
from mlops.registry.v1 import registry_pb2 as pb
from services.inference.runtime import LoadedModel, ModelRejected, Rows, row_count

if TYPE_CHECKING:
    from services.inference.routes import VersionSpec

LABEL, PROBABILITIES, VALUE = signatures.LABEL, signatures.PROBABILITIES, signatures.VALUE
DATATYPE_OF = {np.dtype(dtype): name for name, dtype in signatures.NUMPY.items() if dtype is not np.object_}
LEGACY_OUTPUTS = {
    "probabilities": (PROBABILITIES, "FP32"),
    "label": (LABEL, "BYTES"),
    "prediction": (VALUE, "FP32"),
}


@dataclass(frozen=True)
class InputPlan:
    """One graph input: its datatype, rank, the columns it carries (in the order of its last dimension)."""

    name: str
    datatype: str
    dtype: np.dtype
    rank: int
    columns: tuple[str, ...]

    @property
    def text(self) -> bool:
        return self.datatype == "BYTES"

    @property
    def width(self) -> int:
        return len(self.columns)

    @property
    def shape(self) -> list[int]:
        return [-1] if self.rank == 1 else [-1, self.width or -1]


@dataclass(frozen=True)
class OutputPlan:
    """One graph output as it is answered: its role, its datatype and shape (-1 where they vary)."""

    name: str
    role: str
    datatype: str
    shape: tuple[int, ...]
    class_index: bool = False
    """An integer label indexing `class_labels`, answered as the class names."""


class Interface:
    def __init__(
        self,
        inputs: tuple[InputPlan, ...],
        outputs: tuple[OutputPlan, ...],
        *,
        feature_names: tuple[str, ...],
        class_labels: tuple[str, ...],
        reorder: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.inputs = inputs
        self.by_input = {plan.name: plan for plan in inputs}
        self.column_of = {column: (plan, i) for plan in inputs for i, column in enumerate(plan.columns)}
        self.single = inputs[0] if len(inputs) == 1 else None
        self.outputs = outputs
        self.by_output = {plan.name: plan for plan in outputs}
        self.output_names = tuple(plan.name for plan in outputs)
        self.class_labels = class_labels
        self.reorder = reorder or {}
        self._role = {plan.role: plan for plan in reversed(outputs) if plan.role}
        ordered = [c for c in feature_names if c in self.column_of]
        ordered += [c for c in self.column_of if c not in set(ordered)]
        self.text_features = tuple(c for c in ordered if self.column_of[c][0].text)
        self.numeric_features = tuple(c for c in ordered if not self.column_of[c][0].text)
        only = self.single
        self._plain = (
            only is not None and not only.text and only.rank == 2 and only.columns == self.numeric_features
        )
        """The platform's own shape: rows are the logged features as they are."""

    def run(self, loaded: LoadedModel):
        """The call the batcher makes: the model's, with probability columns put in `class_labels` order
        where the graph orders its classes otherwise."""
        if not self.reorder:
            return loaded.run
        reorder = self.reorder

        def run(rows: Rows) -> dict[str, np.ndarray]:
            answer = loaded.run(rows)
            for name, order in reorder.items():
                answer[name] = answer[name][:, order]
            return answer

        return run

    def refeed(self, rows: Rows, source: Interface) -> Rows:
        """`rows` decoded for `source` (another version of the model: a shadow's champion) as this
        interface's inputs, column by column; unchanged when both take the same inputs."""
        if source is self or _layout(source) == _layout(self):
            return rows
        arrays = rows if isinstance(rows, dict) else {source.inputs[0].name: rows}
        count = row_count(rows)
        fed = {}
        for plan in self.inputs:
            matrix = np.empty((count, plan.width), dtype=plan.dtype)
            for index, column in enumerate(plan.columns):
                where = source.column_of.get(column)
                if where is None:
                    raise ValueError(f"column {column!r} of input {plan.name!r} is not among the request's")
                values = arrays[where[0].name].reshape(count, -1)[:, where[1]]
                matrix[:, index] = values if plan.text else values.astype(plan.dtype)
            fed[plan.name] = matrix.reshape(count) if plan.rank == 1 else matrix
        return fed[self.inputs[0].name] if self.single is not None else fed

    # --- the inference log's view of a call ------------------------------------------------------

    def logged_inputs(self, rows: Rows) -> tuple[list, list | None]:
        """Per row: the numeric features (in `numeric_features` order), and the text ones (or None
        when the model has none)."""
        if self._plain:
            return rows.tolist(), None  # type: ignore[union-attr]
        arrays = rows if isinstance(rows, dict) else {self.inputs[0].name: rows}
        count = row_count(rows)

        def column(name: str) -> np.ndarray:
            plan, index = self.column_of[name]
            return arrays[plan.name].reshape(count, -1)[:, index]

        if self.numeric_features:
            numbers = np.column_stack([column(c).astype(np.float64) for c in self.numeric_features]).tolist()
        else:
            numbers = [[] for _ in range(count)]
        if not self.text_features:
            return numbers, None
        texts = np.column_stack([column(c) for c in self.text_features]).tolist()
        return numbers, [[_text(v) for v in row] for row in texts]

    def logged_outputs(self, outputs: dict[str, np.ndarray], count: int) -> tuple[list, list[str]]:
        """Per row: the outputs the monitor reads (probabilities in class_labels order, or the
        regression value) and the predicted label (empty for regression)."""
        probabilities = self._role.get(PROBABILITIES)
        label = self._role.get(LABEL)
        value = self._role.get(VALUE)
        names = self.class_labels
        scores: list = [[] for _ in range(count)]
        texts = [""] * count
        if probabilities is not None and probabilities.name in outputs:
            matrix = np.asarray(outputs[probabilities.name], dtype=np.float64).reshape(count, -1)
            scores = matrix.tolist()
            if names and matrix.shape[1] == len(names):
                texts = [names[i] for i in matrix.argmax(axis=1).tolist()]
        elif value is not None and value.name in outputs:
            scores = [[v] for v in np.asarray(outputs[value.name], dtype=np.float64).reshape(-1).tolist()]
        if label is not None and label.name in outputs:
            values = np.asarray(outputs[label.name]).reshape(-1).tolist()
            if label.class_index:
                texts = [names[i] if 0 <= i < len(names) else str(i) for i in values]
            else:
                texts = [_text(v) for v in values]
        return scores, texts

    def metadata_inputs(self) -> list[tuple[str, str, list[int], str]]:
        """(name, datatype, shape, columns as JSON) of each graph input."""
        return [(p.name, p.datatype, p.shape, json.dumps(list(p.columns))) for p in self.inputs]


def _layout(interface: Interface) -> tuple:
    return tuple((p.name, p.dtype, p.rank, p.columns) for p in interface.inputs)


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


# --- building ------------------------------------------------------------------------------------


def build(loaded: LoadedModel, spec: VersionSpec, registered: pb.ModelSignature | None = None) -> Interface:
    """The version's interface, or ModelRejected naming what it cannot serve."""
    name = f"{spec.version}"
    graph = getattr(loaded, "signature", None)
    if graph is None or not loaded.graph_inputs:
        return _legacy(loaded, spec)
    record = registered if registered is not None and not signatures.is_legacy(registered) else None
    class_labels = tuple(spec.class_labels) or tuple(graph.class_labels)
    inputs = _inputs(loaded, graph, record, tuple(spec.feature_names), name)
    outputs, reorder = _outputs(loaded, graph, record, class_labels)
    roles = {plan.role for plan in outputs}
    if spec.task == "classification" and not roles & {LABEL, PROBABILITIES}:
        raise ModelRejected(
            f"v{name}: a classification model needs an output holding the class probabilities or the "
            f"label; outputs {', '.join(loaded.output_names)}"
        )
    if spec.task == "regression" and VALUE not in roles:
        raise ModelRejected(
            f"v{name}: a regression model needs a numeric output holding its value; outputs "
            f"{', '.join(loaded.output_names)}"
        )
    return Interface(
        inputs, outputs, feature_names=tuple(spec.feature_names), class_labels=class_labels, reorder=reorder
    )


def _legacy(loaded: LoadedModel, spec: VersionSpec) -> Interface:
    """A model that describes only one input and its output names (the platform's contract)."""
    dtype = np.dtype(loaded.input_dtype)
    plan = InputPlan(loaded.input_name, DATATYPE_OF.get(dtype, "FP32"), dtype, 2, tuple(spec.feature_names))
    outputs = []
    for output in loaded.output_names:
        role, datatype = LEGACY_OUTPUTS.get(output, ("", "FP32"))
        shape = (-1, len(spec.class_labels)) if role == PROBABILITIES else (-1,)
        outputs.append(OutputPlan(output, role, datatype, shape, class_index=role == LABEL))
    return Interface(
        (plan,),
        tuple(outputs),
        feature_names=tuple(spec.feature_names),
        class_labels=tuple(spec.class_labels),
    )


def _inputs(
    loaded: LoadedModel,
    graph: pb.ModelSignature,
    record: pb.ModelSignature | None,
    features: tuple[str, ...],
    name: str,
) -> tuple[InputPlan, ...]:
    recorded = {s.name: tuple(s.columns) for s in record.inputs if s.columns} if record is not None else {}
    specs = {s.name: s for s in graph.inputs}
    columns: dict[str, tuple[str, ...]] = {}
    left = []
    for tensor in loaded.graph_inputs:
        if tensor.name in recorded:
            columns[tensor.name] = recorded[tensor.name]
        elif tensor.name in features:
            columns[tensor.name] = (tensor.name,)
        else:
            left.append(tensor.name)
    used = {c for named in columns.values() for c in named}
    rest = tuple(c for c in features if c not in used)
    if len(left) == 1 and rest:
        columns[left[0]] = rest
    else:
        for input_name in left:  # no data set says what feeds them: they are sent whole, by name
            width = _width(specs[input_name])
            columns[input_name] = (
                (input_name,) if width == 1 else tuple(f"{input_name}_{i}" for i in range(max(width, 0)))
            )
    plans = []
    for tensor in loaded.graph_inputs:
        spec = specs[tensor.name]
        named = columns[tensor.name]
        width = _width(spec)
        if width > 0 and named and width != len(named):
            raise ModelRejected(
                f"v{name}: input {tensor.name!r} has shape {list(spec.shape)} but {len(named)} columns "
                f"feed it ({', '.join(named[:12])})"
            )
        dtype = np.dtype(signatures.NUMPY[spec.datatype])
        plans.append(InputPlan(tensor.name, spec.datatype, dtype, max(len(spec.shape), 1), named))
    return tuple(plans)


def _width(spec: pb.TensorSpec) -> int:
    return 1 if len(spec.shape) <= 1 else int(spec.shape[-1])


def _outputs(
    loaded: LoadedModel,
    graph: pb.ModelSignature,
    record: pb.ModelSignature | None,
    class_labels: tuple[str, ...],
) -> tuple[tuple[OutputPlan, ...], dict[str, np.ndarray]]:
    roles = {s.name: s.role for s in graph.outputs if s.role}
    if record is not None:
        roles = {s.name: s.role for s in record.outputs if s.role} or roles
    graph_classes = tuple(graph.class_labels)
    plans = []
    reorder: dict[str, np.ndarray] = {}
    for spec in graph.outputs:
        role = roles.get(spec.name, "")
        shape = (-1, *(int(d) for d in spec.shape[1:]))  # the rows vary, whatever the graph says
        datatype = spec.datatype
        class_index = False
        if spec.onnx_type:
            if not spec.onnx_type.startswith("seq(map("):
                continue  # neither a tensor nor a ZipMap: not answered
            datatype, shape = "FP32", (-1, len(class_labels) or -1)
        elif (
            not graph_classes
            and class_labels
            and role != VALUE
            and "label" in spec.name.lower()
            and datatype in ("INT64", "INT32")
        ):
            role, datatype, class_index = LABEL, "BYTES", True
        if role == PROBABILITIES:
            columns = shape[-1] if len(shape) >= 2 else -1
            if columns > 0 and class_labels and columns != len(class_labels):
                raise ModelRejected(
                    f"output {spec.name!r} has {columns} columns but the desired state lists "
                    f"{len(class_labels)} class labels"
                )
            if graph_classes and class_labels and graph_classes != class_labels:
                if sorted(graph_classes) != sorted(class_labels):
                    raise ModelRejected(
                        f"output {spec.name!r}: the graph's classes {list(graph_classes)} are not the "
                        f"desired state's {list(class_labels)}"
                    )
                reorder[spec.name] = np.array([graph_classes.index(c) for c in class_labels])
        plans.append(OutputPlan(spec.name, role, datatype, shape, class_index))
    return tuple(plans), reorder
