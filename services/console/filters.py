"""Jinja filters: how times, numbers and states read on every page."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp
from jinja2 import Environment

from mlops.events.v1 import common_pb2, deployment_pb2
from mlops.registry.v1 import registry_pb2


def when(stamp: Timestamp | None) -> str:
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return "—"
    return stamp.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def num(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e12):
        return f"{int(value):,}"
    return f"{value:.{digits}g}"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def rollout_state(value: int) -> str:
    return deployment_pb2.RolloutState.Name(value).removeprefix("ROLLOUT_STATE_").lower().replace("_", " ")


def trigger(value: int) -> str:
    return common_pb2.TrainingTrigger.Name(value).removeprefix("TRAINING_TRIGGER_").lower()


def comparison(value: int) -> str:
    names = {"GREATER_OR_EQUAL": "≥", "LESS_OR_EQUAL": "≤", "GREATER": ">", "LESS": "<", "EQUAL": "="}
    name = common_pb2.Comparison.Name(value).removeprefix("COMPARISON_")
    return names.get(name, name.lower())


def run_status(value: int) -> str:
    return registry_pb2.RunStatus.Name(value).removeprefix("RUN_STATUS_").lower()


def size(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def install(env: Environment) -> None:
    env.filters.update(
        when=when,
        num=num,
        pct=pct,
        rollout_state=rollout_state,
        trigger=trigger,
        comparison=comparison,
        size=size,
        run_status=run_status,
    )
