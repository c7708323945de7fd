"""Kafka side of the trainer: recorded data set versions and retrain requests become queued jobs.

The handlers only queue (inside the consumer's inbox transaction, so a redelivered event queues
nothing); the workers in the core do the training, so a long run never holds up the consumer.
"""

from __future__ import annotations

from mlops.bus import EventContext
from mlops.events.v1 import data_pb2, training_pb2
from services.trainer.core import TrainerCore


class TrainerHandlers:
    def __init__(self, core: TrainerCore) -> None:
        self.core = core

    async def on_dataset_recorded(self, event: data_pb2.DatasetVersionRecorded, ctx: EventContext) -> None:
        assert ctx.session is not None
        await self.core.queue_for_recorded(event, event_id=ctx.envelope.id, session=ctx.session)

    async def on_retrain_requested(self, event: training_pb2.RetrainRequested, ctx: EventContext) -> None:
        assert ctx.session is not None
        await self.core.queue_for_retrain(event, event_id=ctx.envelope.id, session=ctx.session)
