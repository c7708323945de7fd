"""Checks every consumer applies to an event before acting on it, whoever produced it.

An upstream producer can put anything on a topic: a timestamp in the year 33658, a version of -5, a
sha256 that is not one, a model name of a megabyte. Each of these would fail somewhere deep in a
handler, often as an exception a retry cannot cure. They are refused here instead, once, with the
field's path in the message, so the record goes to its dead-letter topic at once with a reason a
person can act on. The rules follow the fields' declared types and the naming conventions of
`protos/mlops/events/v1`; a handler still checks what only it knows (does the model exist?).
"""

from __future__ import annotations

import math
import re

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from mlops.errors import InvalidArgument

# What datetime (and RFC 3339) can represent: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
MAX_DURATION_SECONDS = 315_576_000_000  # ten thousand years, protobuf's own bound
MAX_NAME_LENGTH = 253
NAME_FIELDS = frozenset({"model", "dataset", "name"})
SHA256 = re.compile(r"^[0-9a-f]{64}$")
NON_NEGATIVE = re.compile(r"(^|_)(version|row_count|size_bytes|epochs_run|count)$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class EventCheckFailed(InvalidArgument):
    """An event whose content can never be handled, named by the field at fault."""


def check_event(event: Message, *, key_field: str | None = None) -> None:
    """Raise EventCheckFailed naming every field at fault; return quietly for a sound event."""
    problems: list[str] = []
    if key_field:
        key = getattr(event, key_field, "")
        if not key:
            problems.append(f"{key_field}: is required (the entity this event is about)")
    _walk(event, "", problems)
    if problems:
        kind = event.DESCRIPTOR.name
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise EventCheckFailed(f"{kind} refused: {shown}")


def _walk(message: Message, prefix: str, problems: list[str]) -> None:
    full_name = message.DESCRIPTOR.full_name
    if full_name == "google.protobuf.Timestamp":
        _check_timestamp(message, prefix, problems)
        return
    if full_name == "google.protobuf.Duration":
        if abs(message.seconds) > MAX_DURATION_SECONDS or not -999_999_999 <= message.nanos <= 999_999_999:
            problems.append(f"{prefix}: duration of {message.seconds} s is out of range")
        return
    for field, value in message.ListFields():
        path = f"{prefix}.{field.name}" if prefix else field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                item_path = f"{path}[{key!r}]"
                if isinstance(item, Message):
                    _walk(item, item_path, problems)
                else:
                    _check_scalar(field.message_type.fields_by_name["value"], item, item_path, problems)
        elif field.is_repeated:
            for index, item in enumerate(value):
                if isinstance(item, Message):
                    _walk(item, f"{path}[{index}]", problems)
                else:
                    _check_scalar(field, item, f"{path}[{index}]", problems)
        elif isinstance(value, Message):
            _walk(value, path, problems)
        else:
            _check_scalar(field, value, path, problems)


def _check_timestamp(stamp: Message, path: str, problems: list[str]) -> None:
    if not MIN_TIMESTAMP_SECONDS <= stamp.seconds <= MAX_TIMESTAMP_SECONDS:
        problems.append(f"{path}: {stamp.seconds} seconds is not a date between the years 1 and 9999")
    elif not 0 <= stamp.nanos <= 999_999_999:
        problems.append(f"{path}: nanos {stamp.nanos} must be 0 to 999999999")


def _check_scalar(field: FieldDescriptor, value, path: str, problems: list[str]) -> None:
    name = field.name
    if field.type == FieldDescriptor.TYPE_STRING:
        if name.endswith("sha256") and value and not SHA256.match(value):
            problems.append(f"{path}: {_shown(value)} is not a sha256 (64 lowercase hex digits)")
        elif name in NAME_FIELDS:
            if len(value) > MAX_NAME_LENGTH:
                problems.append(f"{path}: a name of {len(value)} characters; at most {MAX_NAME_LENGTH}")
            elif CONTROL.search(value):
                problems.append(f"{path}: {_shown(value)} contains control characters")
    elif field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32):
        if value < 0 and NON_NEGATIVE.search(name):
            problems.append(f"{path}: must not be negative, got {value}")
    elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        # NaN can mean "not defined" (a metric on one class); infinity never comes from a measurement.
        if math.isinf(value):
            problems.append(f"{path}: must be finite, got {value}")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")
