"""`mlops runs`: runs of the trainer and of code outside the platform, their parameters, tags, files
and per-epoch metrics."""

from __future__ import annotations

from typing import Annotated

import typer

from mlops.cli.context import cli_context
from mlops.cli.output import MISSING, enum_name, mapping, number, short_sha, timestamp, version
from mlops.events.v1 import common_pb2, training_pb2
from mlops.registry.v1 import registry_pb2

app = typer.Typer(help="Inspect runs: the trainer's and those logged from outside.", no_args_is_help=True)

STATUSES = {
    name.removeprefix("RUN_STATUS_").lower(): value
    for name, value in registry_pb2.RunStatus.items()
    if value != registry_pb2.RUN_STATUS_UNSPECIFIED
}


def _status(value: int) -> str:
    return enum_name(registry_pb2.RunStatus, value, "RUN_STATUS_")


@app.command("list")
def list_(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only runs of this model.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", "-s", help=f"Only runs in this state: {', '.join(STATUSES)}.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="At most this many rows; 0 for all.")] = 50,
) -> None:
    """Training runs, newest first."""
    cli = cli_context(ctx)
    wanted = 0
    if status:
        if status.lower() not in STATUSES:
            raise typer.BadParameter(
                f"{status!r} is not one of {', '.join(STATUSES)}", param_hint="'--status'"
            )
        wanted = STATUSES[status.lower()]

    async def work():
        async with cli.registry() as registry:
            request = registry_pb2.ListRunsRequest(model=model or "", status=wanted)
            return await cli.paginate(registry.ListRuns, request, "runs", limit)

    response: registry_pb2.ListRunsResponse = cli.run("runs list", work)
    output = cli.output
    if output.json_mode:
        output.json(response)
        return
    output.table(
        ["run", "model", "status", "data set", "trigger", "started", "ended", "version", "metrics"],
        (
            [
                r.run_id,
                r.model,
                _status(r.status),
                f"{r.dataset} v{r.dataset_version}" if r.dataset else MISSING,
                enum_name(common_pb2.TrainingTrigger, r.trigger, "TRAINING_TRIGGER_"),
                timestamp(r.started_at),
                timestamp(r.ended_at),
                version(r.model_version),
                mapping(r.metrics),
            ]
            for r in response.runs
        ),
        title="runs",
    )
    if response.next_page_token:
        output.notice(f"more runs exist; raise --limit (now {limit}) to see them")


@app.command("show")
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run's id.")],
) -> None:
    """One run: what it trained, its parameters, tags and files, its metrics per epoch, the machine,
    the outcome."""
    cli = cli_context(ctx)

    async def work():
        async with cli.registry() as registry:
            request = registry_pb2.GetRunRequest(run_id=run_id, include_history=True)
            return await cli.call(registry.GetRun, request)

    run: registry_pb2.Run = cli.run("runs show", work, **{"mlops.run.id": run_id})
    output = cli.output
    if output.json_mode:
        output.json(run)
        return
    hardware = run.hardware
    machine = ", ".join(
        part
        for part in (
            hardware.device,
            f"{hardware.accelerator_count}× {hardware.accelerator}" if hardware.accelerator else "",
            f"{hardware.cpu_count} CPUs" if hardware.cpu_count else "",
            hardware.hostname,
        )
        if part
    )
    pairs = [
        ("run", run.run_id),
        ("model", run.model),
        ("source", run.source or "trainer"),
        ("status", _status(run.status)),
        ("spec version", version(run.spec_version)),
        ("data set", f"{run.dataset} v{run.dataset_version}" if run.dataset else MISSING),
        ("trigger", enum_name(common_pb2.TrainingTrigger, run.trigger, "TRAINING_TRIGGER_")),
        ("started", timestamp(run.started_at)),
        ("ended", timestamp(run.ended_at)),
        ("model version", version(run.model_version)),
        ("machine", machine or MISSING),
    ]
    if run.parent_run_id:
        pairs.append(("search run", run.parent_run_id))
    if run.error or run.failed_stage:
        stage = enum_name(training_pb2.TrainingStage, run.failed_stage, "TRAINING_STAGE_")
        pairs.append(("failed", f"at {stage}: {run.error or MISSING}"))
    output.fields(pairs)
    output.table(["param", "value"], sorted(run.params.items()), title="params")
    output.table(["tag", "value"], sorted(run.tags.items()), title="tags")
    output.table(
        ["artifact", "size", "sha256", "stored"],
        (
            [a.path, f"{a.size_bytes} bytes", short_sha(a.sha256), timestamp(a.created_at)]
            for a in sorted(run.artifacts, key=lambda a: a.path)
        ),
        title="artifacts",
    )
    output.table(
        ["metric", "value"], ([k, number(v)] for k, v in sorted(run.metrics.items())), title="final metrics"
    )
    names = sorted({name for epoch in run.history for name in epoch.metrics})
    output.table(
        ["epoch", *names],
        (
            [epoch.epoch, *(number(epoch.metrics[n]) if n in epoch.metrics else MISSING for n in names)]
            for epoch in run.history
        ),
        title="metrics per epoch",
    )
