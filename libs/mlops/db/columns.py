"""Column kinds every service's tables use: a stored protobuf message, a JSON document, a timestamp."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field


def message_column() -> Any:
    """The public protobuf message of a row, serialised: what comes back is exactly what went in."""
    return Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))


def json_column() -> Any:
    """A JSONB document (tags, metrics, labels) that queries filter with `@>` and `->>`."""
    return Field(
        default_factory=dict, sa_column=sa.Column(postgresql.JSONB, nullable=False, server_default="{}")
    )


def time_column(**kwargs: Any) -> Any:
    """A timezone-aware timestamp; pass `server_default=sa.func.now()` for creation times."""
    return Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, **kwargs))
