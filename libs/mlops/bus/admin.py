"""Topic management: the platform creates the topics it uses, with their dead-letter twins."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from mlops.event_catalog import DLQ_SUFFIX, spec_for_topic
from mlops.settings import BusSettings, KafkaSettings

log = logging.getLogger(__name__)


async def ensure_topics(kafka: KafkaSettings, bus: BusSettings, topics: Iterable[str]) -> None:
    """Create the topics that do not exist yet; compacted ones (desired state) get `cleanup.policy=compact`."""
    wanted = sorted(set(topics))
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return
        new_topics = []
        for name in missing:
            spec = spec_for_topic(name.removeprefix(bus.topic_prefix))
            config = {"cleanup.policy": "compact"} if spec is not None and spec.compacted else {}
            new_topics.append(
                NewTopic(name, bus.topic_partitions, bus.topic_replication, topic_configs=config)
            )
        try:
            response = await admin.create_topics(new_topics)
        except TopicAlreadyExistsError:
            return
        for topic, code, *_ in getattr(response, "topic_errors", []) or []:
            if code not in (0, TopicAlreadyExistsError.errno):
                log.warning("creating topic %s failed with error code %s", topic, code)
    finally:
        await admin.close()


async def partitions_of(kafka: KafkaSettings, topic: str) -> list[TopicPartition]:
    """The partitions of an existing topic, for readers that assign them rather than join a group."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(
        (
            TopicPartition(topic, p["partition"])
            for d in described
            if d["error_code"] == 0
            for p in d["partitions"]
        ),
        key=lambda tp: tp.partition,
    )


def with_dead_letters(topics: Iterable[str]) -> list[str]:
    return [name for topic in topics for name in (topic, topic + DLQ_SUFFIX)]
