"""The inference log's messages: split to stay under a byte bound, a record over it shed and counted."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from prometheus_client import REGISTRY

from mlops.settings import BusSettings, KafkaSettings
from services.inference import inference_log
from services.inference.inference_log import InferenceLogger, _Entry, _messages
from tests.unit.test_inference_codec import serving


def entry(rows: int, request_id: str = "r", model: str = "wine") -> _Entry:
    target = serving()
    target.model = model
    features = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    outputs = target.loaded.run(features)
    return _Entry(
        target, "production", request_id, 1_700_000_000_000_000_000, 0.0, features, outputs, 120, ""
    )


async def test_a_batch_is_split_into_messages_under_the_byte_bound():
    entries = [entry(400, f"req-{i}") for i in range(5)]
    messages, shed = await _messages(entries, 1.0, "server-1", max_bytes=8_192)
    assert shed == {}
    sizes = [message.ByteSize() for _, message in messages]
    assert len(messages) > 1 and max(sizes) <= 8_192, sizes
    ids = [record.request_id for _, message in messages for record in message.records]
    assert ids == [f"req-{i}/{row}" for i in range(5) for row in range(400)], "every row, in order"
    assert sum(sizes) > 0.6 * 8_192 * len(messages), f"messages are filled, not one row each: {sizes}"


async def test_a_record_larger_than_the_bound_is_shed_and_reported():
    huge = entry(1, "x" * 10_000)
    messages, shed = await _messages([entry(2), huge, entry(2)], 1.0, "server-1", max_bytes=4_096)
    assert shed == {"wine": 1}
    assert sum(len(message.records) for _, message in messages) == 4


async def test_the_logger_counts_shed_records_under_a_fixed_reason():
    model = f"m{uuid.uuid4().hex[:8]}"

    class Publisher:
        def __init__(self) -> None:
            self.sizes: list[int] = []

        async def publish(self, message) -> None:
            self.sizes.append(message.ByteSize())

    logger = InferenceLogger(
        KafkaSettings(), BusSettings(), source="t", server_id="s", max_message_bytes=4_096
    )
    publisher = Publisher()
    logger._publisher = publisher  # type: ignore[assignment]
    for item in (entry(200, "a", model), entry(1, "y" * 8_000, model)):
        logger.record(item.serving, "production", item.request_id, 0, item.rows, item.outputs, 10)
    await logger._publish_ready(flush=True)
    assert publisher.sizes and max(publisher.sizes) <= 4_096
    dropped = REGISTRY.get_sample_value(
        "mlops_inference_log_dropped_total", {"model": model, "reason": "record_too_large"}
    )
    assert dropped == 1
    assert REGISTRY.get_sample_value("mlops_inference_log_records_total", {"model": model}) == 200
    assert "record_too_large" in inference_log.prometheus.LOG_DROP_REASONS


def test_the_bound_stays_below_the_producers_largest_request():
    from pydantic import ValidationError

    from services.inference.settings import InferenceSettings

    with pytest.raises(ValidationError, match="log_max_message_bytes"):
        InferenceSettings(log_max_message_bytes=1_048_576)
