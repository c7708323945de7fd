"""What the client returns: small dataclasses read from the registry's messages, never protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.message import Message

from mlops_client import protocol


def _time(message: Message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp = getattr(message, name)
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=UTC)


def _status(number: int) -> str:
    return protocol.enum_name("RunStatus", number).removeprefix("RUN_STATUS_")


@dataclass(frozen=True)
class Metric:
    """One value of a metric at a step."""

    key: str
    value: float
    step: int
    timestamp: datetime | None = None


@dataclass(frozen=True)
class Artifact:
    """A file a run stored."""

    path: str
    uri: str
    sha256: str
    size_bytes: int
    created_at: datetime | None = None

    @classmethod
    def from_proto(cls, message: Message) -> Artifact:
        return cls(
            message.path, message.uri, message.sha256, message.size_bytes, _time(message, "created_at")
        )


@dataclass(frozen=True)
class Run:
    """A run as the registry holds it. `metrics` are the final values; `history` every step, by metric."""

    run_id: str
    experiment: str
    status: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[Metric]] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)
    source: str = ""
    dataset: str = ""
    dataset_version: int = 0
    model_version: int = 0
    error: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @classmethod
    def from_proto(cls, message: Message) -> Run:
        history: dict[str, list[Metric]] = {}
        for epoch in message.history:
            stamp = _time(epoch, "logged_at")
            for key, value in sorted(epoch.metrics.items()):
                history.setdefault(key, []).append(Metric(key, value, epoch.epoch, stamp))
        return cls(
            run_id=message.run_id,
            experiment=message.model,
            status=_status(message.status),
            params=dict(message.params),
            tags=dict(message.tags),
            metrics=dict(message.metrics),
            history=history,
            artifacts=[Artifact.from_proto(item) for item in message.artifacts],
            source=message.source,
            dataset=message.dataset,
            dataset_version=message.dataset_version,
            model_version=message.model_version,
            error=message.error,
            started_at=_time(message, "started_at"),
            ended_at=_time(message, "ended_at"),
        )


@dataclass(frozen=True)
class Tensor:
    """One input or output of a model's graph."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    columns: tuple[str, ...] = ()
    role: str = ""

    @classmethod
    def from_proto(cls, message: Message) -> Tensor:
        return cls(message.name, message.datatype, tuple(message.shape), tuple(message.columns), message.role)


@dataclass(frozen=True)
class Signature:
    """What a model takes and gives, as the registry read it from the graph."""

    inputs: list[Tensor]
    outputs: list[Tensor]
    feature_names: list[str]
    class_labels: list[str]
    task: str

    @classmethod
    def from_proto(cls, message: Message) -> Signature:
        return cls(
            inputs=[Tensor.from_proto(item) for item in message.inputs],
            outputs=[Tensor.from_proto(item) for item in message.outputs],
            feature_names=list(message.feature_names),
            class_labels=list(message.class_labels),
            task=message.task,
        )


@dataclass(frozen=True)
class ModelVersion:
    """A registered version of a model. `created` is False when the same bytes were registered before."""

    name: str
    version: int
    run_id: str
    dataset: str
    dataset_version: int
    artifact_uri: str
    artifact_sha256: str
    artifact_size_bytes: int
    signature: Signature
    metrics: dict[str, float]
    tags: dict[str, str]
    aliases: list[str]
    description: str
    origin: str
    created_at: datetime | None = None
    created: bool | None = None

    @classmethod
    def from_proto(cls, message: Message, *, created: bool | None = None) -> ModelVersion:
        return cls(
            name=message.model,
            version=message.version,
            run_id=message.run_id,
            dataset=message.dataset,
            dataset_version=message.dataset_version,
            artifact_uri=message.artifact_uri,
            artifact_sha256=message.artifact_sha256,
            artifact_size_bytes=message.artifact_size_bytes,
            signature=Signature.from_proto(message.signature),
            metrics=dict(message.metrics),
            tags=dict(message.tags),
            aliases=list(message.aliases),
            description=message.description,
            origin=message.origin,
            created_at=_time(message, "created_at"),
            created=created,
        )


@dataclass(frozen=True)
class Alias:
    """Where an alias of a model points now, and its last change."""

    name: str
    alias: str
    version: int
    updated_by: str
    reason: str
    updated_at: datetime | None = None

    @classmethod
    def from_proto(cls, message: Message) -> Alias:
        return cls(
            message.model,
            message.alias,
            message.version,
            message.updated_by,
            message.reason,
            _time(message, "updated_at"),
        )
