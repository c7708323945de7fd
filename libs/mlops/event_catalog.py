"""What the proto tree says about each event: its topic, its CloudEvents type and its key field.

The options live on the messages themselves (`protos/mlops/events/v1/options.proto`), so the proto
tree stays the only place where a topic name is written down. Protobuf only: a core that names the
topic of an event it queues needs neither Kafka nor gRPC for it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import cache

from google.protobuf.message import Message

import mlops.events.v1 as events_package
from mlops.events.v1 import options_pb2

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class EventSpec:
    """One event type: its message, topic, CloudEvents type and key."""

    message: type[Message]
    topic: str
    ce_type: str
    key_field: str
    compacted: bool = False
    """Whether the topic keeps only the latest record per key (desired state)."""

    def key_of(self, event: Message) -> str:
        return str(getattr(event, self.key_field))


@cache
def _catalog() -> tuple[dict[type[Message], EventSpec], dict[str, EventSpec], dict[str, EventSpec]]:
    by_class: dict[type[Message], EventSpec] = {}
    for module_info in pkgutil.iter_modules(events_package.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"{events_package.__name__}.{module_info.name}")
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            options = descriptor.GetOptions()
            if not options.HasExtension(options_pb2.topic):
                continue
            cls = getattr(module, descriptor.name)
            by_class[cls] = EventSpec(
                message=cls,
                topic=options.Extensions[options_pb2.topic],
                ce_type=options.Extensions[options_pb2.event_type],
                key_field=options.Extensions[options_pb2.key_field],
                compacted=options.Extensions[options_pb2.compacted],
            )
    by_topic = {spec.topic: spec for spec in by_class.values()}
    by_type = {spec.ce_type: spec for spec in by_class.values()}
    return by_class, by_topic, by_type


def spec_for(message: type[Message] | Message) -> EventSpec:
    cls = message if isinstance(message, type) else type(message)
    try:
        return _catalog()[0][cls]
    except KeyError:
        raise TypeError(f"{cls.__name__} is not an event: it has no (mlops.events.v1.topic) option") from None


def spec_for_topic(topic: str) -> EventSpec | None:
    return _catalog()[1].get(topic)


def spec_for_type(ce_type: str) -> EventSpec | None:
    return _catalog()[2].get(ce_type)


def all_events() -> list[EventSpec]:
    return sorted(_catalog()[0].values(), key=lambda spec: spec.topic)
