"""CloudEvents 1.0 in Kafka binary mode: the `ce_*` headers, `content-type`, W3C trace context.

The value is the protobuf message; `application/json` with the protobuf JSON mapping is accepted
from upstream producers as well, and the `ce_*` headers they leave out are filled in.

Values and headers in, values and headers out: no Kafka client here, so that the outbox writer
(`mlops.outbox`) can encode an event inside a core's transaction and the relay send it later.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from mlops.errors import InvalidArgument
from mlops.event_catalog import EventSpec, spec_for_topic
from mlops.event_checks import EventCheckFailed, check_event

SPECVERSION = "1.0"
PROTOBUF = "application/protobuf"
JSON = "application/json"
_PROTOBUF_ALIASES = {
    PROTOBUF,
    "application/x-protobuf",
    "application/vnd.google.protobuf",
    "application/octet-stream",
}

Headers = list[tuple[str, bytes]]


class MalformedEvent(InvalidArgument):
    """A record that can never be handled as it is: it goes to the dead-letter topic with this reason."""


def rfc3339(moment: datetime | None = None) -> str:
    if moment is None:
        return _now_rfc3339()
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_second: tuple[int, str] = (-1, "")
"""The last whole second formatted, and its text: `ce_time` is written per record, strftime per second."""


def _now_rfc3339() -> str:
    global _second
    now = time.time()
    whole = int(now)
    second, text = _second
    if whole != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)  # one tuple: a thread reading it sees a consistent pair
    return f"{text}.{int((now - whole) * 1_000_000):06d}Z"


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_event_id() -> str:
    """A random (version 4) UUID; `getrandbits` is ample for uniqueness and far cheaper than urandom.

    The bits are those `uuid.UUID(int=..., version=4)` sets, formatted directly: building a UUID
    object per event cost more than the rest of the envelope.
    """
    digits = "%032x" % ((random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


@dataclass(frozen=True)
class Envelope:
    """The CloudEvents attributes of one record, plus every header as text."""

    id: str
    source: str
    type: str
    time: str
    content_type: str
    specversion: str = SPECVERSION
    subject: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def traceparent(self) -> str | None:
        return self.headers.get("traceparent")


def encode(
    event: Message,
    spec: EventSpec,
    *,
    source: str,
    event_id: str | None = None,
    content_type: str = PROTOBUF,
    extra: Iterable[tuple[str, str]] = (),
) -> tuple[bytes, Headers]:
    """Value and headers of one event (trace context is added by the publisher's span)."""
    if content_type == JSON:
        value = json_format.MessageToJson(event, indent=None, preserving_proto_field_name=False).encode()
    else:
        value = event.SerializeToString()
    headers: Headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", (event_id or new_event_id()).encode()),
        ("ce_source", source.encode()),
        ("ce_type", spec.ce_type.encode()),
        ("ce_time", rfc3339().encode()),
        ("ce_subject", spec.key_of(event).encode()),
        ("content-type", content_type.encode()),
    ]
    headers.extend((name, text.encode()) for name, text in extra)
    return value, headers


def _header_text(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    text: dict[str, str] = {}
    try:
        for name, raw in headers:
            text[name.lower()] = raw.decode() if raw else ""
    except UnicodeDecodeError:
        raise MalformedEvent(f"header {name!r} is not UTF-8 text") from None
    return text


def generated_id(
    topic: str, partition: int, offset: int, timestamp_ms: int | None, key: bytes | None, value: bytes
) -> str:
    """The id of a record whose producer sent no `ce_id`: the same for a redelivery of that record.

    Its position alone is not enough: a topic deleted and created again numbers its offsets from
    zero, and the inbox would take the new record at an old position for a duplicate. Kafka's
    topic id would tell the two topics apart, but aiokafka's metadata requests (up to v5) do not
    carry it, so the record's own timestamp and a digest of its key and value do: a redelivery
    repeats all three, a new record at a reused position differs in at least one.
    """
    digest = hashlib.blake2b(digest_size=8)
    digest.update(len(key).to_bytes(4, "big") + key if key is not None else b"\xff" * 4)
    digest.update(value)
    return f"{topic}/{partition}/{offset}/{timestamp_ms if timestamp_ms is not None else ''}/{digest.hexdigest()}"


def decode(
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    headers: Sequence[tuple[str, bytes | None]],
    value: bytes | None,
    key: bytes | None = None,
    check: bool = True,
) -> tuple[Envelope, Message]:
    """Parse one record into its envelope and message, or raise `MalformedEvent` saying why.

    `check` applies `mlops.event_checks` to the message (dates, versions, digests, names); a
    consumer that checks each field itself on a hot path (the monitor's inference logs) turns it off.
    """
    spec = spec_for_topic(topic)
    if spec is None:
        raise MalformedEvent(f"topic {topic!r} carries no known event type")
    text = _header_text(headers)
    ce_type = text.get("ce_type") or spec.ce_type
    if ce_type != spec.ce_type:
        raise MalformedEvent(f"ce_type {ce_type!r} is not accepted on {topic}; expected {spec.ce_type!r}")
    specversion = text.get("ce_specversion") or SPECVERSION
    if specversion != SPECVERSION:
        raise MalformedEvent(f"ce_specversion {specversion!r} is not supported; expected '1.0'")
    if value is None:
        raise MalformedEvent("record has no value (a tombstone is not an event)")

    content_type = text.get("content-type") or ""
    if content_type != PROTOBUF:  # what the bus itself writes needs no normalising
        content_type = content_type.split(";")[0].strip().lower()
    if not content_type:
        content_type = JSON if value.lstrip()[:1] == b"{" else PROTOBUF
    message = spec.message()
    if content_type == JSON:
        try:
            json_format.Parse(value, message, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError) as error:
            raise MalformedEvent(f"JSON payload does not match {spec.message.__name__}: {error}") from None
    elif content_type in _PROTOBUF_ALIASES:
        try:
            message.ParseFromString(value)
        except DecodeError as error:
            raise MalformedEvent(
                f"protobuf payload does not parse as {spec.message.__name__}: {error}"
            ) from None
    else:
        raise MalformedEvent(f"content-type {content_type!r} is not supported; use {PROTOBUF} or {JSON}")
    if check:
        try:
            check_event(message, key_field=spec.key_field)
        except EventCheckFailed as error:
            raise MalformedEvent(error.message) from None

    event_time = text.get("ce_time")
    if not event_time:  # formatted only when missing: most records carry their ce_time
        if timestamp_ms is not None:
            event_time = rfc3339(datetime.fromtimestamp(timestamp_ms / 1000, UTC))
        else:
            event_time = rfc3339()
    envelope = Envelope(
        id=text.get("ce_id") or generated_id(topic, partition, offset, timestamp_ms, key, value),
        source=text.get("ce_source") or "urn:mlops:upstream",
        type=ce_type,
        time=event_time,
        content_type=content_type,
        specversion=specversion,
        subject=text.get("ce_subject"),
        headers=text,
    )
    return envelope, message
