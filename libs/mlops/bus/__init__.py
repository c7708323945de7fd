"""The event bus on aiokafka: producer and consumer with the CloudEvents envelope and trace context on
every record, the inbox the consumer claims in the handler's transaction, the outbox relay, retries
and dead letters, topics and ACLs.

What a core needs to queue an event without Kafka lives outside this package: the outbox writer
(`mlops.outbox`), the event catalog (`mlops.event_catalog`), the envelope, event ids and times
(`mlops.envelope`), and the trace context as text (`mlops.tracecontext`).
"""

from mlops.bus.admin import ensure_topics, partitions_of
from mlops.bus.consumer import EventConsumer, EventContext, Handler
from mlops.bus.inbox import Inbox
from mlops.bus.producer import EventPublisher
from mlops.bus.relay import OutboxRelay
from mlops.bus.tables import create_bus_tables, drop_bus_tables

__all__ = [
    "EventConsumer",
    "EventContext",
    "EventPublisher",
    "Handler",
    "Inbox",
    "OutboxRelay",
    "create_bus_tables",
    "drop_bus_tables",
    "ensure_topics",
    "partitions_of",
]
