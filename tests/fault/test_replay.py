"""R4: every topic replayed from offset 0 to every service changes no state.

The services that keep consumer-group offsets in Kafka are stopped, their groups are moved back to
offset 0 on every partition they read, and they are started again; the inference server reads the
desired state from the beginning on every start anyway. Once every group has caught up, every table
of every service's schema must hold what it held before, and no event but dead letters may have been
published.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy import text

from mlops.db import Database
from mlops.settings import DatabaseSettings
from tests.fault.conftest import (
    CONSUMER_GROUPS,
    SERVICE_PORTS,
    end_offsets,
    figures,
    group_lag,
    run,
    serving,
    wait_until,
)

SCHEMAS = ("registry", "trainer", "evaluator", "deployer", "monitor")


async def table_digests(database: Database) -> dict[str, tuple[int, str]]:
    """(row count, md5 of every row in a stable order) of every table of every service's schema."""
    digests: dict[str, tuple[int, str]] = {}
    async with database.session() as session:
        connection = await session.connection()
        tables = (
            await connection.execute(
                text(
                    "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                    "WHERE table_schema = ANY(:schemas) AND table_type = 'BASE TABLE' ORDER BY 1"
                ),
                {"schemas": list(SCHEMAS)},
            )
        ).scalars()
        for table in list(tables):
            row = (
                await connection.execute(
                    text(
                        f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"
                    )
                )
            ).one()
            digests[table] = (row[0], row[1])
    return digests


async def reset_to_earliest(kafka, group: str) -> int:
    """Move a group (with no member running) back to offset 0 on every partition it has offsets for."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    if not committed:
        return 0
    member = AIOKafkaConsumer(**kafka.client_options(), group_id=group, enable_auto_commit=False)
    await member.start()
    try:
        partitions = list(committed)
        member.assign(partitions)
        starts = await member.beginning_offsets(partitions)
        await member.commit({tp: OffsetAndMetadata(starts[tp], "") for tp in partitions})
    finally:
        await member.stop()
    return sum(committed[tp].offset - starts[tp] for tp in partitions)


def event_topics_except_dead_letters(ends: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    return {tp: offset for tp, offset in ends.items() if not tp.topic.endswith(".dlq")}


@pytest.mark.timeout(900)
async def test_replaying_every_topic_from_offset_0_changes_no_state(kafka_settings):
    database = Database(DatabaseSettings())
    try:
        # Work still settling (a monitoring window that closes with the clock, a job finishing) is let
        # finish first: the state is taken once two looks 5 s apart agree. What still moves after
        # that moves by itself (leases, check times) and is compared by its row count only.
        loop = asyncio.get_running_loop()
        settle_deadline = loop.time() + 180
        first = await table_digests(database)
        while True:
            await asyncio.sleep(5)
            second = await table_digests(database)
            if second == first or loop.time() > settle_deadline:
                break
            first = second
        moving = {table for table in first if first[table][1] != second[table][1]}

        admin = AIOKafkaAdminClient(**kafka_settings.client_options())
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics() if t.startswith("mlops.")]
        finally:
            await admin.close()
        published_before = event_topics_except_dead_letters(await end_offsets(kafka_settings, topics))

        with_groups = [name for name in CONSUMER_GROUPS]
        down = run("bash", "infra/local/services.sh", "down", *with_groups, "inference")
        assert down.returncode == 0, down.stdout + down.stderr
        replayed = 0
        for name in with_groups:
            for group in CONSUMER_GROUPS[name]:
                replayed += await reset_to_earliest(kafka_settings, group)
        started = time.monotonic()
        up = run("bash", "infra/local/services.sh", "up", *with_groups, "inference")
        assert up.returncode == 0, up.stdout + up.stderr
        for name, port in SERVICE_PORTS.items():
            wait_until(lambda port=port: serving(port), timeout_s=120, what=f"{name} serving")

        groups = [group for name in with_groups for group in CONSUMER_GROUPS[name]]
        deadline = loop.time() + 600
        while [g for g in groups if await group_lag(kafka_settings, g) > 0]:
            assert loop.time() < deadline, {g: await group_lag(kafka_settings, g) for g in groups}
            await asyncio.sleep(1)
        caught_up_s = time.monotonic() - started

        after = await table_digests(database)
        published_after = event_topics_except_dead_letters(await end_offsets(kafka_settings, topics))
    finally:
        await database.close()

    changed = sorted(
        table
        for table in first
        if after.get(table, (None, None))[0] != second[table][0]
        or (table not in moving and after[table][1] != second[table][1])
    )
    new_tables = sorted(set(after) - set(first))
    republished = {
        f"{tp.topic}[{tp.partition}]": published_after.get(tp, 0) - offset
        for tp, offset in published_before.items()
        if published_after.get(tp, 0) != offset
    }
    figures(
        "R4 replay",
        records_replayed=replayed,
        tables=len(first),
        tables_moving_by_themselves=len(moving),
        tables_changed=len(changed),
        events_published=sum(republished.values()),
        caught_up_s=round(caught_up_s, 1),
    )
    assert replayed > 0, "nothing to replay: run after the closed loop has produced events"
    assert not changed and not new_tables, f"state changed on replay: {changed + new_tables}"
    assert not republished, f"events published on replay: {republished}"
