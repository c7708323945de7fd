"""Kafka side of the deployer: every `ModelEvaluated` that passed its gate starts a rollout."""

from __future__ import annotations

from opentelemetry import trace

from mlops.bus import EventContext
from mlops.events.v1 import evaluation_pb2
from services.deployer.core import DeployerCore


class DeployerHandlers:
    def __init__(self, core: DeployerCore) -> None:
        self.core = core

    async def on_model_evaluated(self, event: evaluation_pb2.ModelEvaluated, ctx: EventContext) -> None:
        """Start the rollout in the inbox transaction: its first desired state and events are queued in
        the outbox if and only if the event is marked handled. An event without a model or a version,
        or about a model or version the registry does not know, is a permanent error (InvalidArgument,
        NotFound), and so is a pass the registry does not confirm (FailedPrecondition): it goes to the
        DLQ with the reason."""
        assert ctx.session is not None
        trace.get_current_span().set_attributes(
            {"mlops.model.name": event.model, "mlops.model.version": event.version}
        )
        await self.core.handle_model_evaluated(event, session=ctx.session)
