"""`mlops`: the command line of the platform. Every error becomes its exit code here, and only here."""

from __future__ import annotations

import os
import sys
from enum import IntEnum
from importlib import metadata
from typing import Annotated

import typer
import typer.main
from pydantic import ValidationError
from typer.core import TyperGroup

from mlops.cli import alias, apply, config, contexts, data, models, retrain, rollout, runs, trace
from mlops.cli import monitor as monitor_cli
from mlops.cli.context import DEFAULT_REGISTRY_ADDR, CliContext
from mlops.cli.output import Output
from mlops.cli.refs import RefError
from mlops.errors import DeadlineExceeded, InvalidArgument, MlopsError, NotFound, Unavailable


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    INVALID = 4
    UNAVAILABLE = 5


EXIT_CODES_HELP = """\
Exit codes:
  0  ok
  1  the operation failed (a precondition, a conflict, an unexpected error)
  2  usage error (unknown option, malformed NAME@VERSION)
  3  not found (model, version, alias, data set, run)
  4  invalid argument or bad spec (every problem named by its field path)
  5  unavailable (the registry, the artifact store or Kafka cannot be reached in time)
"""


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code a failure ends the process with."""
    if isinstance(error, NotFound):
        return ExitCode.NOT_FOUND
    if isinstance(error, InvalidArgument | ValidationError):
        return ExitCode.INVALID
    if isinstance(error, Unavailable | DeadlineExceeded):
        return ExitCode.UNAVAILABLE
    if isinstance(error, RefError):
        return ExitCode.USAGE
    return ExitCode.FAILED


def describe(error: BaseException) -> str:
    if isinstance(error, MlopsError):
        return error.message
    if isinstance(error, ValidationError):
        # Each problem by its field and message, never the input: it may hold a token or a password.
        problems = (
            f"{'.'.join(map(str, item['loc']))}: {item['msg']}" if item["loc"] else item["msg"]
            for item in error.errors(include_input=False, include_url=False)
        )
        return f"invalid configuration ({error.title}): {'; '.join(problems)}"
    return str(error) or type(error).__name__


_HANDLED = (MlopsError, ValidationError, RefError, OSError)

DISTRIBUTION = "mlops-platform"
COMPLETE_ENV = "_MLOPS_COMPLETE"
"""Set by the shell's completion function (`mlops --install-completion`) when it asks for candidates."""
JSON_HELP = "Print results as JSON (the protobuf JSON mapping of the responses)."


def package_version() -> str:
    """The installed package's version; 'unknown' when run from a tree that was never installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def _json_anywhere(ctx: typer.Context, value: bool) -> None:
    # The root's callback has built the context object by the time a subcommand parses its options.
    if value:
        root = ctx.find_root()
        if isinstance(root.obj, CliContext):
            root.obj.json_mode = True
            root.obj.output.json_mode = True


def _json_option():
    """The `--json` every command and group takes besides the root's, built by Typer as its own are."""
    probe = typer.Typer(add_completion=False)

    @probe.command()
    def _probe(
        json_mode: Annotated[
            bool, typer.Option("--json", help=JSON_HELP, callback=_json_anywhere, expose_value=False)
        ] = False,
    ) -> None:
        """Never run: only its option is taken."""

    return next(param for param in typer.main.get_command(probe).params if "--json" in param.opts)


_JSON_OPTION = _json_option()


def _with_json_option(command) -> None:
    """Give `command` and every command under it a `--json` of its own, so that it may follow them."""
    if not any("--json" in param.opts for param in command.params):
        command.params.append(_JSON_OPTION)
    for child in getattr(command, "commands", {}).values():
        _with_json_option(child)


class MlopsGroup(TyperGroup):
    """The root command: every subcommand runs inside its `invoke`, so errors are mapped in one place."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            _with_json_option(command)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise typer.Exit(int(ExitCode.FAILED)) from None  # the reader went away: nothing to tell it
        except _HANDLED as error:
            output = ctx.obj.output if isinstance(ctx.obj, CliContext) else Output(json_mode=False)
            output.error(describe(error))
            raise typer.Exit(int(exit_code_for(error))) from error


app = typer.Typer(
    cls=MlopsGroup,
    name="mlops",
    help="Operate the MLOps platform: apply model specs, commit data, inspect models, runs and lineage, "
    "move aliases, ask for retraining. `--json` may follow any command.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mlops {package_version()}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    registry: Annotated[
        str,
        typer.Option(
            "--registry", envvar="MLOPS_REGISTRY_ADDR", metavar="ADDR", help="The registry's gRPC address."
        ),
    ] = DEFAULT_REGISTRY_ADDR,
    json_mode: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.1, metavar="SECONDS", help="Deadline of each call to a service."),
    ] = 30.0,
    show_version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    ctx.obj = CliContext(
        registry_addr=registry, json_mode=json_mode, timeout_s=timeout, output=Output(json_mode=json_mode)
    )


app.command("apply", help=apply.HELP)(apply.apply)
app.add_typer(contexts.app, name="context")
app.add_typer(data.app, name="data")
app.add_typer(models.app, name="models")
app.add_typer(alias.app, name="alias")
app.add_typer(runs.app, name="runs")
app.add_typer(rollout.app, name="rollout")
app.command("retrain", help=retrain.HELP)(retrain.retrain)
app.command("trace", help=trace.HELP)(trace.trace)
app.add_typer(monitor_cli.drift_app, name="drift")
app.add_typer(monitor_cli.monitor_app, name="monitor")


def main() -> None:
    """The `mlops` command: the current context's settings first (what the shell sets wins), then the app."""
    try:
        config.apply(os.environ)
    except MlopsError as error:  # a broken configuration must not lock people out of `mlops context`
        if COMPLETE_ENV not in os.environ:  # nor write into the shell's prompt while completing
            print(f"warning: {error.message}", file=sys.stderr)
    app(prog_name="mlops")
