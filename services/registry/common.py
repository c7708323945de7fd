"""What every part of the registry shares: time stamps, stored messages, paging, list filters and the
checks that turn a bad field into a message a user can act on."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from mlops.errors import InvalidArgument
from services.registry import spec as specs
from services.registry.settings import RegistrySettings

M = TypeVar("M", bound=Message)

ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
FORMATS = ("csv", "parquet")


def now() -> datetime:
    return datetime.now(UTC)


def timestamp(moment: datetime | None) -> Timestamp:
    stamp = Timestamp()
    if moment is not None:
        stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def moment(stamp: Timestamp, default: datetime | None = None) -> datetime | None:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return default
    return stamp.ToDatetime(tzinfo=UTC)


def same_fields(source: Message, cls: type[M]) -> M:
    """A `cls` carrying every field of `source` that has the same name there (an event from a record)."""
    wanted = {field.name for field in cls.DESCRIPTOR.fields}
    values = json_format.MessageToDict(source, preserving_proto_field_name=True)
    return json_format.ParseDict({k: v for k, v in values.items() if k in wanted}, cls())


def parse(cls: type[M], body: bytes) -> M:
    message = cls()
    message.ParseFromString(body)
    return message


def json_text(value: dict) -> str:
    """A map as the jsonb columns store it (keys sorted, so equal maps give equal text)."""
    return json.dumps(value, sort_keys=True)


class Page:
    """Offset paging behind an opaque token (`page_size` 0 means the default)."""

    def __init__(self, size: int, token: str, settings: RegistrySettings) -> None:
        if size < 0:
            raise InvalidArgument(f"page_size must not be negative, got {size}")
        self.size = min(size or settings.default_page_size, settings.max_page_size)
        try:
            self.offset = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except ValueError:
            raise InvalidArgument(
                "page_token is not one this server issued; start again without it"
            ) from None

    @property
    def params(self) -> dict[str, int]:
        """One row more than the page holds: its presence says there is a next page."""
        return {"limit": self.size + 1, "offset": self.offset}

    def cut(self, rows: list) -> tuple[list, str]:
        """The page's rows and the token of the next page ("" on the last)."""
        if len(rows) > self.size:
            token = base64.urlsafe_b64encode(str(self.offset + self.size).encode()).decode()
            return rows[: self.size], token
        return rows, ""


class Where:
    """The conditions of a list query: equality on the filters that are set, time ranges, extras."""

    def __init__(self, **equal: object) -> None:
        self.parts: list[str] = ["TRUE"]
        self.params: dict[str, object] = {}
        for column, value in equal.items():
            if value:
                self.add(f"{column} = :{column}", **{column: value})

    def add(self, condition: str, **params: object) -> Where:
        self.parts.append(condition)
        self.params.update(params)
        return self

    def between(self, column: str, request: Message, after: str, before: str) -> Where:
        """`column` within the request's optional [after, before) timestamps."""
        if request.HasField(after):
            self.add(f"{column} >= :{after}", **{after: moment(getattr(request, after))})
        if request.HasField(before):
            self.add(f"{column} < :{before}", **{before: moment(getattr(request, before))})
        return self

    @property
    def sql(self) -> str:
        return " AND ".join(self.parts)


def need(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidArgument(message)


def check_model_name(name: str) -> None:
    need(
        bool(specs.NAME.match(name)),
        f"model name {name!r} is invalid: lowercase letters, digits and '-', at most 63 characters",
    )


def check_sha(value: str, field: str) -> None:
    need(bool(SHA256.match(value)), f"{field} must be 64 lowercase hex digits, got {value!r}")


def check_uri(value: str, field: str) -> None:
    need(value.startswith(("s3://", "file://")), f"{field} must be an s3:// or file:// URI, got {value!r}")
