"""The registry's messages and methods, built from the shipped FileDescriptorSet in a private pool.

The platform's generated modules register the same `.proto` file names in protobuf's default pool;
importing them, or adding these files to that pool, would clash in a process that holds both (a
notebook that imports the platform too). A pool of our own holds the same schema with no clash, and
calls go through `channel.unary_unary` and friends with each class's own (de)serialisers.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

DESCRIPTOR_SET = "registry_descriptors.binpb"
PACKAGE = "mlops.registry.v1"
SERVICE = f"{PACKAGE}.Registry"


@cache
def pool() -> descriptor_pool.DescriptorPool:
    """A descriptor pool holding registry.proto and everything it imports, and nothing else."""
    data = resources.files(__package__).joinpath(DESCRIPTOR_SET).read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(data)
    private = descriptor_pool.DescriptorPool()
    for file in files.file:  # --include_imports lists dependencies before their dependants
        private.Add(file)
    return private


@cache
def message_class(name: str) -> type[Message]:
    """The class of a registry message by its name in the package (`"Run"`, `"RegisterModelRequest.Header"`)."""
    return message_factory.GetMessageClass(pool().FindMessageTypeByName(_full(name)))


def new(name: str, **fields: object) -> Message:
    """A registry message, e.g. `new("GetRunRequest", run_id=run_id)`."""
    return message_class(name)(**fields)


def _full(name: str) -> str:
    return name if name.startswith(("mlops.", "google.")) else f"{PACKAGE}.{name}"


def enum_value(enum: str, name: str) -> int:
    """The number of an enum value, e.g. `enum_value("RunStatus", "RUN_STATUS_FAILED")`."""
    return pool().FindEnumTypeByName(_full(enum)).values_by_name[name].number


def enum_name(enum: str, number: int) -> str:
    """The name of an enum value; the number as text for a value this schema does not know."""
    values = pool().FindEnumTypeByName(_full(enum)).values_by_number
    return values[number].name if number in values else str(number)


def method(name: str) -> tuple[str, type[Message], type[Message], bool, bool]:
    """A Registry method: its path, request and response classes, and whether each side streams."""
    found = pool().FindServiceByName(SERVICE).methods_by_name[name]
    return (
        f"/{SERVICE}/{name}",
        message_factory.GetMessageClass(found.input_type),
        message_factory.GetMessageClass(found.output_type),
        found.client_streaming,
        found.server_streaming,
    )
