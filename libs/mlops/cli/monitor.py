"""`mlops drift` and `mlops monitor`: what the monitor sees of a model's versions in service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, TypeVar

import typer
from google.protobuf.message import Message

from mlops.cli.context import CliContext, cli_context
from mlops.cli.output import MISSING, mapping, number, timestamp
from mlops.errors import DeadlineExceeded, Unavailable
from mlops.grpc import open_channel, raise_typed
from mlops.monitor.v1 import monitor_pb2, monitor_pb2_grpc

DEFAULT_MONITOR_ADDR = "127.0.0.1:50053"

M = TypeVar("M", bound=Message)

drift_app = typer.Typer(help="Data and prediction drift of a model's versions.", no_args_is_help=True)
monitor_app = typer.Typer(help="Live health of a model's versions.", no_args_is_help=True)

MonitorOption = Annotated[
    str,
    typer.Option(
        "--monitor", envvar="MLOPS_MONITOR_ADDR", metavar="ADDR", help="The monitor's gRPC address."
    ),
]


@asynccontextmanager
async def _monitor(address: str) -> AsyncIterator[monitor_pb2_grpc.MonitorStub]:
    async with open_channel(address) as channel:
        yield monitor_pb2_grpc.MonitorStub(channel)


async def _call(cli: CliContext, address: str, rpc: Callable[..., Awaitable[M]], request: Message) -> M:
    try:
        with raise_typed():
            return await rpc(request, timeout=cli.timeout_s)
    except Unavailable as error:
        raise Unavailable(f"the monitor at {address} is unavailable: {error.message}") from None
    except DeadlineExceeded:
        raise DeadlineExceeded(
            f"the monitor at {address} did not answer within {cli.timeout_s:g}s (--timeout)"
        ) from None


@drift_app.command("status")
def drift_status(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The model's name.")],
    version: Annotated[int, typer.Option("--version", "-v", min=0, help="One version; 0 for every one.")] = 0,
    windows: Annotated[int, typer.Option("--windows", "-n", min=1, help="Newest windows per version.")] = 5,
    monitor: MonitorOption = DEFAULT_MONITOR_ADDR,
) -> None:
    """Per version: the newest windows with every feature's score, drifted windows in a row, the last alarm."""
    cli = cli_context(ctx)

    async def work():
        async with _monitor(monitor) as stub:
            request = monitor_pb2.GetDriftStatusRequest(model=name, version=version, window_limit=windows)
            return await _call(cli, monitor, stub.GetDriftStatus, request)

    response: monitor_pb2.GetDriftStatusResponse = cli.run("drift status", work, **{"mlops.model.name": name})
    output = cli.output
    if output.json_mode:
        output.json(response)
        return
    if not response.versions:
        output.line(f"{name}: no windows closed yet")
        return
    for item in response.versions:
        # Set when an alarm of a model trained outside the platform asked for a new model.
        new_model = item.new_model_reason
        output.fields(
            [
                ("model", f"{response.model} v{item.version}"),
                *([("new model needed", new_model)] if new_model else []),
                (
                    "judged by",
                    f"{item.method} (threshold {number(item.threshold)})" if item.method else MISSING,
                ),
                ("drifted windows in a row", item.consecutive_windows),
                (
                    "last drift alarm",
                    timestamp(item.last_alarm_at) if item.HasField("last_alarm_at") else MISSING,
                ),
                ("live metrics", mapping(dict(item.live_metrics))),
                ("degraded windows in a row", item.degraded_windows),
                (
                    "last degradation",
                    timestamp(item.last_degradation_at) if item.HasField("last_degradation_at") else MISSING,
                ),
            ]
        )
        features = sorted({f.feature for w in item.windows for f in w.features})
        rows = []
        for window in item.windows:
            scores = {f.feature: f for f in window.features}
            state = "drifted" if window.drifted else ("ok" if window.judged else "too few")
            rows.append(
                [
                    timestamp(window.window.start),
                    window.sample_count,
                    state,
                    number(window.prediction_drift_score),
                    *(
                        (number(scores[f].score) + ("*" if scores[f].drifted else ""))
                        if f in scores
                        else MISSING
                        for f in features
                    ),
                ]
            )
        output.table(
            ["window start", "rows", "state", "prediction", *features],
            rows,
            title=f"windows of v{item.version}, newest first (* crossed the threshold)",
        )


@monitor_app.command("health")
def health(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The model's name.")],
    window: Annotated[
        int,
        typer.Option(
            "--window", "-w", min=0, metavar="SECONDS", help="How far back; 0 for the spec's window."
        ),
    ] = 0,
    monitor: MonitorOption = DEFAULT_MONITOR_ADDR,
) -> None:
    """Per version seen recently: requests (scaled by the sampling rate), errors, latency, live metrics."""
    cli = cli_context(ctx)

    async def work():
        async with _monitor(monitor) as stub:
            request = monitor_pb2.GetModelHealthRequest(model=name, window_seconds=window)
            return await _call(cli, monitor, stub.GetModelHealth, request)

    response: monitor_pb2.GetModelHealthResponse = cli.run(
        "monitor health", work, **{"mlops.model.name": name}
    )
    output = cli.output
    if output.json_mode:
        output.json(response)
        return
    output.table(
        ["version", "window", "requests", "errors", "error rate", "p50 ms", "p99 ms", "live metrics"],
        (
            [
                f"v{v.version}",
                f"{timestamp(v.window.start)} .. {timestamp(v.window.end)}",
                v.request_count,
                v.error_count,
                number(v.error_rate),
                number(v.latency_p50_ms),
                number(v.latency_p99_ms),
                mapping(dict(v.metrics)),
            ]
            for v in response.versions
        ),
        title=f"health of {response.model}",
    )
