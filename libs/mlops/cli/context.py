"""What every command shares: the global options, the output, the registry client, a traced run."""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import typer
from google.protobuf.message import Message
from opentelemetry import trace

from mlops.cli.output import Output
from mlops.errors import DeadlineExceeded, Unavailable
from mlops.grpc import open_channel, raise_typed
from mlops.registry.v1 import registry_pb2_grpc
from mlops.telemetry import setup_telemetry

T = TypeVar("T")
M = TypeVar("M", bound=Message)

DEFAULT_REGISTRY_ADDR = "127.0.0.1:50051"
_MAX_PAGE = 1000  # the registry's largest page

tracer = trace.get_tracer("mlops.cli")


def _quiet_libraries() -> None:
    """Library loggers would repeat, as tracebacks and retries, what the command reports as one error."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.ERROR)


def current_user() -> str:
    """The OS user, for `committed_by`, `applied_by` and the alias ledger's actor."""
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (some containers) and no LOGNAME/USER
        return os.environ.get("USER") or "unknown"


@dataclass
class CliContext:
    """Built once by the root command from the global options; commands find it in `ctx.obj`."""

    registry_addr: str = DEFAULT_REGISTRY_ADDR
    json_mode: bool = False
    timeout_s: float = 30.0
    output: Output = field(default_factory=lambda: Output(json_mode=False))

    def run(self, command: str, work: Callable[[], Awaitable[T]], **attributes: str | int) -> T:
        """Run one command's async work under a span `mlops <command>`, then flush the spans.

        The span is current while `work` runs, so the gRPC, S3 and Kafka calls it makes are its
        children and one `data commit` is one trace across every service that reacts to it.
        """
        _quiet_libraries()
        # A command is short: without a collector, give up exporting after 2 s rather than the
        # exporter's default 10 s (an explicit OTEL_EXPORTER_OTLP_TIMEOUT still wins).
        os.environ.setdefault("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
        telemetry = setup_telemetry("cli")
        try:
            with tracer.start_as_current_span(f"mlops {command}", attributes=attributes):
                return asyncio.run(work())
        finally:
            # Flush, not shut down: tests run many commands in one process.
            telemetry.provider.force_flush(timeout_millis=3_000)

    @asynccontextmanager
    async def registry(self) -> AsyncIterator[registry_pb2_grpc.RegistryStub]:
        async with open_channel(self.registry_addr) as channel:
            yield registry_pb2_grpc.RegistryStub(channel)

    async def call(self, rpc: Callable[..., Awaitable[M]], request: Message) -> M:
        """One unary call with the global deadline; a failed status becomes its typed error."""
        try:
            with raise_typed():
                return await rpc(request, timeout=self.timeout_s)
        except Unavailable as error:
            raise Unavailable(
                f"the registry at {self.registry_addr} is unavailable: {error.message}"
            ) from None
        except DeadlineExceeded:
            raise DeadlineExceeded(
                f"the registry at {self.registry_addr} did not answer within {self.timeout_s:g}s (--timeout)"
            ) from None

    async def paginate(self, rpc: Callable[..., Awaitable[M]], request: Message, items: str, limit: int) -> M:
        """Follow `next_page_token` until `limit` items (0: all) are in; one response holds them all.

        Fields other than the list come from the first page (e.g. `aliases_at`, complete on the first
        page of GetAliasHistory); `next_page_token` is where the listing stopped, empty at the end.
        """
        combined: M | None = None
        while True:
            wanted = limit - len(getattr(combined, items)) if (combined is not None and limit) else limit
            request.page_size = min(wanted, _MAX_PAGE) if wanted else _MAX_PAGE
            page = await self.call(rpc, request)
            if combined is None:
                combined = page
            else:
                getattr(combined, items).extend(getattr(page, items))
            combined.next_page_token = page.next_page_token
            if not page.next_page_token or (limit and len(getattr(combined, items)) >= limit):
                break
            request.page_token = page.next_page_token
        listed = getattr(combined, items)
        if limit and len(listed) > limit:
            del listed[limit:]
        return combined


def cli_context(ctx: typer.Context) -> CliContext:
    """The root command's context object (a default one when a command is invoked on its own)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliContext):
        root.obj = CliContext()
    return root.obj
