"""`mlops rollout`: watch and steer rollouts through the deployer (status, list, start, promote,
rollback, pause, resume, desired)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from google.protobuf.message import Message

from mlops.cli.context import CliContext, cli_context, current_user
from mlops.cli.output import MISSING, enum_name, number, short_sha, timestamp, version
from mlops.deployer.v1 import deployer_pb2, deployer_pb2_grpc
from mlops.errors import DeadlineExceeded, InvalidArgument, Unavailable
from mlops.events.v1 import common_pb2, deployment_pb2
from mlops.grpc import open_channel, raise_typed

M = TypeVar("M", bound=Message)

DEFAULT_DEPLOYER_ADDR = "127.0.0.1:50052"

app = typer.Typer(
    help="Watch and steer rollouts: status, promote, roll back, pause, resume.", no_args_is_help=True
)

Deployer = Annotated[
    str,
    typer.Option(
        "--deployer", envvar="MLOPS_DEPLOYER_ADDR", metavar="ADDR", help="The deployer's gRPC address."
    ),
]
Reason = Annotated[str, typer.Option("--reason", "-r", help="Why; kept in the rollout's history.")]
Actor = Annotated[
    str | None,
    typer.Option(
        "--actor",
        help="Who, for a deployer that checks no credentials (the OS user by default); a secured one records who you authenticated as.",
    ),
]
RolloutId = Annotated[
    str | None, typer.Option("--rollout-id", help="Act on this rollout; the model's running one by default.")
]
Model = Annotated[str, typer.Argument(help="The model's name.")]

STATES = {
    name.removeprefix("ROLLOUT_STATE_").lower(): value for name, value in deployment_pb2.RolloutState.items()
}


async def _call(cli: CliContext, address: str, method: str, request: Message) -> Message:
    """One call to the deployer with the global deadline; a failed status becomes its typed error."""
    async with open_channel(address) as channel:
        rpc: Callable[..., Awaitable[M]] = getattr(deployer_pb2_grpc.DeployerStub(channel), method)
        try:
            with raise_typed():
                return await rpc(request, timeout=cli.timeout_s)
        except Unavailable as error:
            raise Unavailable(f"the deployer at {address} is unavailable: {error.message}") from None
        except DeadlineExceeded:
            raise DeadlineExceeded(
                f"the deployer at {address} did not answer within {cli.timeout_s:g}s (--timeout)"
            ) from None


def _state(value: int) -> str:
    return enum_name(deployment_pb2.RolloutState, value, "ROLLOUT_STATE_")


def _role(value: int) -> str:
    return enum_name(common_pb2.ServingRole, value, "SERVING_ROLE_")


def _health(snapshot: common_pb2.HealthSnapshot | None) -> str:
    if snapshot is None or not snapshot.version:
        return MISSING
    return (
        f"{snapshot.request_count} requests, error rate {number(snapshot.error_rate)}, "
        f"p99 {number(snapshot.latency_p99_ms)} ms"
    )


def show_rollout(cli: CliContext, rollout: deployer_pb2.Rollout) -> None:
    output = cli.output
    if output.json_mode:
        output.json(rollout)
        return
    steps = ", ".join(f"{s}%" for s in rollout.steps) or MISSING
    output.fields(
        [
            ("rollout", rollout.rollout_id),
            ("model", rollout.model),
            ("candidate", version(rollout.candidate_version)),
            ("baseline", version(rollout.baseline_version)),
            ("strategy", rollout.strategy),
            ("state", _state(rollout.state)),
            ("step", f"{rollout.step_index + 1} of {len(rollout.steps)} ({steps})"),
            ("traffic", f"{rollout.traffic_percent}%"),
            ("step started", timestamp(rollout.step_started_at)),
            ("step seconds", rollout.step_seconds),
            (
                "bounds",
                f"error rate <= {number(rollout.max_error_rate)}, p99 <= {number(rollout.max_p99_latency_ms)} ms, "
                f">= {rollout.min_requests} requests"
                + (
                    f", prediction drift <= {number(rollout.max_prediction_drift)}"
                    if rollout.max_prediction_drift
                    else ""
                ),
            ),
            ("candidate health", _health(rollout.candidate_health)),
            ("baseline health", _health(rollout.baseline_health)),
            ("generation", rollout.generation),
            ("reason", rollout.reason or MISSING),
            ("started", timestamp(rollout.started_at)),
            ("finished", timestamp(rollout.finished_at)),
        ]
    )
    output.table(
        ["at", "state", "step", "traffic", "generation", "by", "reason"],
        (
            [
                timestamp(move.progressed_at),
                _state(move.state),
                move.step_index + 1,
                f"{move.traffic_percent}%",
                move.generation,
                move.actor or MISSING,
                move.reason,
            ]
            for move in rollout.history
        ),
        title="history",
    )


def _action(
    ctx: typer.Context, command: str, method: str, model: str, rollout_id, actor, reason, deployer
) -> None:
    cli = cli_context(ctx)
    request = deployer_pb2.RolloutActionRequest(
        model=model, rollout_id=rollout_id or "", actor=actor or current_user(), reason=reason
    )
    rollout = cli.run(
        f"rollout {command}", lambda: _call(cli, deployer, method, request), **{"mlops.model.name": model}
    )
    if cli.output.json_mode:
        cli.output.json(rollout)
        return
    cli.output.line(
        f"{rollout.model} rollout {rollout.rollout_id} (v{rollout.candidate_version}): {_state(rollout.state)}, "
        f"{rollout.traffic_percent}% of traffic"
    )
    cli.output.line(rollout.reason)


@app.command("status")
def status(
    ctx: typer.Context, model: Model, rollout_id: RolloutId = None, deployer: Deployer = DEFAULT_DEPLOYER_ADDR
) -> None:
    """The model's running rollout (or its latest one) with its history."""
    cli = cli_context(ctx)
    request = deployer_pb2.GetRolloutRequest(model=model, rollout_id=rollout_id or "")
    rollout = cli.run(
        "rollout status", lambda: _call(cli, deployer, "GetRollout", request), **{"mlops.model.name": model}
    )
    show_rollout(cli, rollout)


@app.command("list")
def list_(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="Only this model's rollouts.")] = None,
    state: Annotated[
        str | None,
        typer.Option("--state", help=f"Only rollouts in this state: {', '.join(list(STATES)[1:])}."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many rows.")] = 50,
    deployer: Deployer = DEFAULT_DEPLOYER_ADDR,
) -> None:
    """Rollouts, newest first."""
    cli = cli_context(ctx)
    if state is not None and state.lower() not in STATES:
        raise InvalidArgument(f"--state {state!r} is not one of {', '.join(list(STATES)[1:])}")
    request = deployer_pb2.ListRolloutsRequest(
        model=model or "", state=STATES[state.lower()] if state else 0, page_size=limit
    )
    response = cli.run("rollout list", lambda: _call(cli, deployer, "ListRollouts", request))
    if cli.output.json_mode:
        cli.output.json(response)
        return
    cli.output.table(
        ["rollout", "model", "candidate", "baseline", "strategy", "state", "traffic", "started", "reason"],
        (
            [
                r.rollout_id,
                r.model,
                version(r.candidate_version),
                version(r.baseline_version),
                r.strategy,
                _state(r.state),
                f"{r.traffic_percent}%",
                timestamp(r.started_at),
                r.reason or MISSING,
            ]
            for r in response.rollouts
        ),
        title="rollouts",
    )


@app.command("start")
def start(
    ctx: typer.Context,
    model: Model,
    to_version: Annotated[int, typer.Argument(metavar="VERSION", min=1, help="The version to roll out.")],
    strategy: Annotated[
        str | None,
        typer.Option("--strategy", help="canary, shadow, blue_green or direct; the spec's by default."),
    ] = None,
    reason: Reason = "",
    actor: Actor = None,
    deployer: Deployer = DEFAULT_DEPLOYER_ADDR,
) -> None:
    """Roll out a version by hand (a redeploy, or a version whose gate failed); supersedes a running one."""
    cli = cli_context(ctx)
    request = deployer_pb2.StartRolloutRequest(
        model=model, version=to_version, strategy=strategy or "", actor=actor or current_user(), reason=reason
    )
    rollout = cli.run(
        "rollout start",
        lambda: _call(cli, deployer, "StartRollout", request),
        **{"mlops.model.name": model, "mlops.model.version": to_version},
    )
    show_rollout(cli, rollout)


@app.command("promote")
def promote(
    ctx: typer.Context,
    model: Model,
    rollout_id: RolloutId = None,
    reason: Reason = "",
    actor: Actor = None,
    deployer: Deployer = DEFAULT_DEPLOYER_ADDR,
) -> None:
    """Promote the running rollout's candidate now, skipping its remaining steps."""
    _action(ctx, "promote", "Promote", model, rollout_id, actor, reason, deployer)


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    model: Model,
    rollout_id: RolloutId = None,
    reason: Reason = "",
    actor: Actor = None,
    deployer: Deployer = DEFAULT_DEPLOYER_ADDR,
) -> None:
    """Withdraw the running rollout's candidate; with none running, return production to the version
    that served before."""
    _action(ctx, "rollback", "Rollback", model, rollout_id, actor, reason, deployer)


@app.command("pause")
def pause(
    ctx: typer.Context,
    model: Model,
    rollout_id: RolloutId = None,
    reason: Reason = "",
    actor: Actor = None,
    deployer: Deployer = DEFAULT_DEPLOYER_ADDR,
) -> None:
    """Hold the running rollout at its step (a broken bound still rolls it back)."""
    _action(ctx, "pause", "Pause", model, rollout_id, actor, reason, deployer)


@app.command("resume")
def resume(
    ctx: typer.Context,
    model: Model,
    rollout_id: RolloutId = None,
    reason: Reason = "",
    actor: Actor = None,
    deployer: Deployer = DEFAULT_DEPLOYER_ADDR,
) -> None:
    """Let a paused rollout step on."""
    _action(ctx, "resume", "Resume", model, rollout_id, actor, reason, deployer)


@app.command("desired")
def desired(ctx: typer.Context, model: Model, deployer: Deployer = DEFAULT_DEPLOYER_ADDR) -> None:
    """The desired serving state the deployer last published for the model."""
    cli = cli_context(ctx)
    request = deployer_pb2.GetDesiredStateRequest(model=model)
    state = cli.run(
        "rollout desired",
        lambda: _call(cli, deployer, "GetDesiredState", request),
        **{"mlops.model.name": model},
    )
    if cli.output.json_mode:
        cli.output.json(state)
        return
    cli.output.line(
        f"{state.model} generation {state.generation} (rollout {state.rollout_id or MISSING}), "
        f"batching max {state.batching.max_batch_size} rows / {state.batching.max_wait_us} µs"
    )
    cli.output.table(
        ["version", "role", "traffic", "artifact"],
        (
            [version(v.version), _role(v.role), f"{v.traffic_percent}%", short_sha(v.artifact_sha256)]
            for v in state.versions
        ),
        title="versions",
    )
