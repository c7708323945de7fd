"""Prometheus metrics of the event bus, shared by every service."""

from prometheus_client import Counter, Gauge, Histogram

PUBLISHED = Counter("mlops_bus_published_total", "Events handed to Kafka", ["topic"])
CONSUMED = Counter(
    "mlops_bus_consumed_total",
    "Records consumed, by outcome (handled, duplicate, dead_lettered)",
    ["topic", "group", "outcome"],
)
RETRIES = Counter(
    "mlops_bus_retries_total", "Handler attempts that failed and were retried", ["topic", "group"]
)
HANDLE_SECONDS = Histogram(
    "mlops_bus_handle_seconds",
    "Time to handle one record, retries included",
    ["topic", "group"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LAG = Gauge(
    "mlops_bus_consumer_lag",
    "Records between the high watermark and the consumer position",
    ["topic", "partition", "group"],
)
OUTBOX_PENDING = Gauge("mlops_outbox_pending", "Outbox rows published by the last relay round", ["schema"])
OUTBOX_OLDEST_AGE = Gauge(
    "mlops_outbox_oldest_age_seconds",
    "Age of the oldest unpublished outbox row at the last relay round (0: none waiting)",
    ["schema"],
)
OUTBOX_RELAYED = Counter("mlops_outbox_relayed_total", "Outbox rows published and removed", ["schema"])
OUTBOX_DEAD_LETTERED = Counter(
    "mlops_outbox_dead_lettered_total", "Outbox rows Kafka refused, sent to the dead-letter topic", ["schema"]
)
