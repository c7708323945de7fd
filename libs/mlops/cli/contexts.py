"""`mlops context`: where the platform is and how to reach it, kept in the configuration file."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from mlops.cli import config
from mlops.cli.context import CliContext

app = typer.Typer(
    help="Switch between platforms: named contexts of addresses and credentials (`make up` writes `local`).",
    epilog="Contexts are kept in ~/.config/mlops/config.yaml ($MLOPS_CONFIG overrides it), owner-only.",
    no_args_is_help=True,
)


def _cli(ctx: typer.Context) -> CliContext:
    return ctx.obj


@app.command("list")
def list_contexts(ctx: typer.Context) -> None:
    """List the contexts; the current one is marked with *."""
    path = config.config_path()
    loaded = config.load(path)
    out = _cli(ctx).output
    if out.json_mode:
        out.json({"config": str(path), "current": loaded.current, "contexts": sorted(loaded.contexts)})
        return
    if not loaded.contexts:
        out.line(
            f"no contexts in {path}: `make up` writes the local one, `mlops context set NAME --from-env` records yours"
        )
        return
    for name in sorted(loaded.contexts):
        registry = loaded.contexts[name].get("MLOPS_REGISTRY_ADDR", "127.0.0.1:50051")
        out.line(f"{'*' if name == loaded.current else ' '} {name:<16} registry {registry}")


@app.command("use")
def use(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The context to make current.")]
) -> None:
    """Make a context current: every later command reaches the platform it names."""
    path = config.config_path()
    loaded = config.load(path)
    loaded.context(name)  # NotFound names the known ones
    loaded.current = name
    config.save(loaded, path)
    _cli(ctx).output.line(f"current context: {name}")


@app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="The context (default: the current one).")] = None,
) -> None:
    """Show a context's settings; secrets and passwords in URLs are never printed."""
    loaded = config.load(config.config_path())
    chosen, values = loaded.context(name)
    shown = config.redacted(values)
    out = _cli(ctx).output
    if out.json_mode:
        out.json({"name": chosen, "current": chosen == loaded.current, "settings": shown})
        return
    out.line(f"{chosen}{' (current)' if chosen == loaded.current else ''}")
    for key, value in shown.items():
        out.line(f"  {key}={value}")


@app.command("set")
def set_context(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The context to write (replaced when it exists).")],
    from_env: Annotated[
        bool,
        typer.Option(
            "--from-env", help="Record the MLOPS_*, AWS_* and OTEL_EXPORTER_OTLP_* variables set now."
        ),
    ] = False,
    values: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="A setting; repeatable.")
    ] = None,
    make_current: Annotated[bool, typer.Option("--use", help="Make it the current context.")] = False,
) -> None:
    """Record a context: the settings of this shell (`--from-env`) and/or given ones (`--set`)."""
    recorded: dict[str, str] = config.captured(os.environ) if from_env else {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not config.KEYS.match(key):
            raise typer.BadParameter(
                f"{item!r}: give KEY=VALUE with a MLOPS_*, AWS_* or OTEL_EXPORTER_OTLP_* key"
            )
        recorded[key] = value
    if not recorded:
        raise typer.BadParameter("nothing to record: give --from-env or --set KEY=VALUE")
    path = config.config_path()
    loaded = config.load(path)
    loaded.contexts[name] = recorded
    if make_current or loaded.current is None:
        loaded.current = name
    config.save(loaded, path)
    _cli(ctx).output.line(f"context {name}: {len(recorded)} settings in {path}")
