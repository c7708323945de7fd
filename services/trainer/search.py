"""Seeded random search over a spec's `training.search` space.

Each trial is the spec's training parameters with some of them replaced by draws from the space.
Draws come from one `random.Random(seed)` over the parameters in name order, so the same spec gives
the same trials every time (and a retried job trains the same trials).
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from mlops.errors import InvalidArgument
from mlops.measures import improves
from mlops.registry.v1 import registry_pb2 as pb
from services.trainer.training import TrainingParams

_INTEGERS = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64}
_REALS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_TUNABLE = set(TrainingParams.__dataclass_fields__) - {
    "validation_fraction",
    "test_fraction",
    "parity_tolerance",
}
"""The split and the parity bound are properties of the data and the gate, not knobs of a trial."""


def draw(param: pb.SearchParam, rng: random.Random) -> object:
    """One value from one parameter's space."""
    kind = param.WhichOneof("space")
    if kind == "uniform":
        return rng.uniform(param.uniform.low, param.uniform.high)
    if kind == "log_uniform":
        low, high = param.log_uniform.low, param.log_uniform.high
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if kind == "int_uniform":
        space = param.int_uniform
        return rng.choice(range(space.low, space.high + 1, space.step or 1))
    if kind == "choice":
        return rng.choice(json_format.MessageToDict(param.choice))
    raise InvalidArgument("a search parameter must give one of uniform, log_uniform, int_uniform, choice")


def cast(name: str, value: object) -> object:
    """A drawn value as the type of the TrainingSpec field it sets (JSON numbers arrive as floats)."""
    path = f"spec.training.search.params.{name}"
    field = pb.TrainingSpec.DESCRIPTOR.fields_by_name.get(name)
    if field is None or name not in _TUNABLE:
        raise InvalidArgument(
            f"{path}: not a tunable training setting; use one of {', '.join(sorted(_TUNABLE))}"
        )
    try:
        if field.is_repeated:
            values = value if isinstance(value, list) else [value]
            return tuple(round(float(v)) for v in values)
        if field.type in _INTEGERS:
            return round(float(value))  # type: ignore[arg-type]
        if field.type in _REALS:
            return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass
    raise InvalidArgument(f"{path}: drew {value!r}, which is not a valid {name}")


def sample_trials(search: pb.SearchSpec, base: TrainingParams) -> list[TrainingParams]:
    """`search.trials` parameter sets (at least one), seeded by the spec's seed."""
    rng = random.Random(base.seed)
    trials = []
    for _ in range(max(search.trials, 1)):
        changes = {name: cast(name, draw(search.params[name], rng)) for name in sorted(search.params)}
        trials.append(replace(base, **changes))
    return trials


def better(metric: str, candidate: float, best: float | None) -> bool:
    """Whether `candidate` beats `best` on `metric`, in the metric's direction (`mlops.measures`)."""
    if best is None or math.isnan(best):
        return not math.isnan(candidate)
    return improves(metric, candidate, best)
