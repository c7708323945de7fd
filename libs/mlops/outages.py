"""Telling an outage of the infrastructure from a failure of the work itself.

An outage (the database, the broker or a peer cannot be reached) says nothing about the message or
request being handled: consumers wait it out instead of dead-lettering, and the gRPC layer answers
UNAVAILABLE, which clients retry. An S3 error is read by its code and status
(`mlops.store.s3_errors`): throttling, 5xx and lost connections are outages; a refusal (403,
NoSuchBucket, any other 4xx) is not, and must not hold the events behind it.
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
        if type(seen).__module__.startswith("botocore."):
            # Imported only once a botocore error exists, so that botocore is loaded already.
            from mlops.store.s3_errors import s3_failure

            return s3_failure(seen) == "outage"
        seen = seen.__cause__ or seen.__context__
    return False
