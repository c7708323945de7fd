"""Telling an outage of the infrastructure from a failure of the work itself.

An outage (the database, the broker or a peer cannot be reached) says nothing about the message or
request being handled: consumers wait it out instead of dead-lettering, and the gRPC layer answers
UNAVAILABLE, which clients retry.
"""

from __future__ import annotations

import asyncpg
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError
from sqlalchemy.exc import DBAPIError

from mlops.errors import Unavailable

_OUTAGES: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    Unavailable,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    KafkaConnectionError,
    NodeNotReadyError,
    KafkaTimeoutError,
    RequestTimedOutError,
)


def is_outage(error: BaseException) -> bool:
    """Whether a failure comes from unreachable infrastructure rather than from the message being handled."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, _OUTAGES):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
