"""Topic management: the platform creates the topics it uses, with their dead-letter twins."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from mlops.bus.catalog import DLQ_SUFFIX, spec_for_topic
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


def with_dead_letters(topics: Iterable[str]) -> list[str]:
    return [name for topic in topics for name in (topic, topic + DLQ_SUFFIX)]
