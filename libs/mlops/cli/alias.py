"""`mlops alias`: move, remove and list aliases, and read their ledger ("what served at time X")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from google.protobuf.timestamp_pb2 import Timestamp

from mlops.cli.context import cli_context, current_user
from mlops.cli.output import MISSING, timestamp, version
from mlops.registry.v1 import registry_pb2

app = typer.Typer(help="Point aliases (production, staging, …) at model versions.", no_args_is_help=True)


def parse_instant(text: str) -> Timestamp:
    """An RFC 3339 instant (`2025-01-15T08:30:00Z`); one without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an RFC 3339 instant, e.g. 2025-01-15T08:30:00Z", param_hint="'--at'"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@app.command("set")
def set_(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model's name.")],
    alias: Annotated[str, typer.Argument(help="The alias, e.g. production.")],
    to_version: Annotated[int, typer.Argument(metavar="VERSION", min=1, help="The version to point it to.")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why; kept in the ledger.")] = "",
    actor: Annotated[
        str | None,
        typer.Option(
            "--actor",
            help="Who, for a registry that checks no credentials (the OS user by default); a secured one records who you authenticated as.",
        ),
    ] = None,
    expected: Annotated[
        int | None,
        typer.Option(
            "--expected-version",
            min=0,
            help="Only if the alias points to this version now (0: does not exist).",
        ),
    ] = None,
) -> None:
    """Point an alias at a version (creating it if needed)."""
    cli = cli_context(ctx)

    async def work():
        async with cli.registry() as registry:
            request = registry_pb2.SetAliasRequest(
                model=model, alias=alias, version=to_version, actor=actor or current_user(), reason=reason
            )
            if expected is not None:
                request.expected_version = expected
            return await cli.call(registry.SetAlias, request)

    response: registry_pb2.SetAliasResponse = cli.run(
        "alias set", work, **{"mlops.model.name": model, "mlops.model.version": to_version}
    )
    if cli.output.json_mode:
        cli.output.json(response)
        return
    if response.changed:
        was = f" (was v{response.previous_version})" if response.previous_version else " (new alias)"
        cli.output.line(f"{model}@{alias} → v{response.alias.version}{was}")
    else:
        cli.output.line(f"{model}@{alias} already points to v{response.alias.version}; nothing changed")


@app.command("rm")
def remove(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model's name.")],
    alias: Annotated[str, typer.Argument(help="The alias to delete.")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why; kept in the ledger.")] = "",
    actor: Annotated[
        str | None,
        typer.Option(
            "--actor",
            help="Who, for a registry that checks no credentials (the OS user by default); a secured one records who you authenticated as.",
        ),
    ] = None,
) -> None:
    """Delete an alias (deleting one that does not exist changes nothing)."""
    cli = cli_context(ctx)

    async def work():
        async with cli.registry() as registry:
            request = registry_pb2.DeleteAliasRequest(
                model=model, alias=alias, actor=actor or current_user(), reason=reason
            )
            return await cli.call(registry.DeleteAlias, request)

    response: registry_pb2.DeleteAliasResponse = cli.run("alias rm", work, **{"mlops.model.name": model})
    if cli.output.json_mode:
        cli.output.json(response)
        return
    if response.deleted:
        cli.output.line(f"{model}@{alias} deleted (pointed to v{response.previous_version})")
    else:
        cli.output.line(f"{model}@{alias} does not exist; nothing changed")


@app.command("list")
def list_(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="Only this model's aliases.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="At most this many rows; 0 for all.")] = 50,
) -> None:
    """The aliases as they are now."""
    cli = cli_context(ctx)

    async def work():
        async with cli.registry() as registry:
            request = registry_pb2.ListAliasesRequest(model=model or "")
            return await cli.paginate(registry.ListAliases, request, "aliases", limit)

    response = cli.run("alias list", work)
    if cli.output.json_mode:
        cli.output.json(response)
        return
    cli.output.table(
        ["model", "alias", "version", "by", "reason", "at"],
        (
            [
                a.model,
                a.alias,
                version(a.version),
                a.updated_by or MISSING,
                a.reason or MISSING,
                timestamp(a.updated_at),
            ]
            for a in response.aliases
        ),
        title="aliases",
    )
    if response.next_page_token:
        cli.output.notice(f"more aliases exist; raise --limit (now {limit}) to see them")


@app.command("history")
def history(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model's name.")],
    alias: Annotated[str | None, typer.Option("--alias", "-a", help="Only this alias.")] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="RFC3339",
            help="Only changes up to this instant, and what each alias pointed to then.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="At most this many changes; 0 for all.")] = 50,
) -> None:
    """The alias ledger, newest first; with --at, what served at that instant."""
    cli = cli_context(ctx)
    instant = parse_instant(at) if at else None

    async def work():
        async with cli.registry() as registry:
            request = registry_pb2.GetAliasHistoryRequest(model=model, alias=alias or "")
            if instant is not None:
                request.at.CopyFrom(instant)
            return await cli.paginate(registry.GetAliasHistory, request, "changes", limit)

    response: registry_pb2.GetAliasHistoryResponse = cli.run(
        "alias history", work, **{"mlops.model.name": model}
    )
    output = cli.output
    if output.json_mode:
        output.json(response)
        return
    if instant is not None:
        output.table(
            ["alias", "version", "since", "by", "reason"],
            (
                [
                    a.alias,
                    version(a.version),
                    timestamp(a.updated_at),
                    a.updated_by or MISSING,
                    a.reason or MISSING,
                ]
                for a in response.aliases_at
            ),
            title=f"aliases of {model} at {timestamp(instant)}",
        )
    output.table(
        ["change", "at", "alias", "from", "to", "by", "reason"],
        (
            [
                c.change_id,
                timestamp(c.changed_at),
                c.alias,
                version(c.from_version),
                version(c.to_version) if c.to_version else "deleted",
                c.actor or MISSING,
                c.reason or MISSING,
            ]
            for c in response.changes
        ),
        title=f"alias changes of {model}",
    )
    if response.next_page_token:
        output.notice(f"older changes exist; raise --limit (now {limit}) to see them")
