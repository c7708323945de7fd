"""The event bus on aiokafka: CloudEvents envelope, trace context, inbox, outbox, retries, dead letters."""

from mlops.bus.admin import ensure_topics, partitions_of
from mlops.bus.catalog import DLQ_SUFFIX, EventSpec, all_events, spec_for, spec_for_topic
from mlops.bus.consumer import EventConsumer, EventContext, Handler
from mlops.bus.envelope import JSON, PROTOBUF, Envelope, MalformedEvent
from mlops.bus.inbox import Inbox
from mlops.bus.outbox import Outbox, OutboxRelay
from mlops.bus.producer import EventPublisher
from mlops.bus.tables import create_bus_tables, drop_bus_tables

__all__ = [
    "DLQ_SUFFIX",
    "JSON",
    "PROTOBUF",
    "Envelope",
    "EventConsumer",
    "EventContext",
    "EventPublisher",
    "EventSpec",
    "Handler",
    "Inbox",
    "MalformedEvent",
    "Outbox",
    "OutboxRelay",
    "all_events",
    "create_bus_tables",
    "drop_bus_tables",
    "ensure_topics",
    "partitions_of",
    "spec_for",
    "spec_for_topic",
]
