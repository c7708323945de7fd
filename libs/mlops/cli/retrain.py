"""`mlops retrain`: ask for a model to be trained again, with its latest spec, on a data set version."""

from __future__ import annotations

from typing import Annotated

import typer

from mlops.cli.context import cli_context
from mlops.cli.output import MISSING, version
from mlops.cli.refs import RefError, parse_dataset_ref
from mlops.registry.v1 import registry_pb2

HELP = """Ask for a model to be retrained with its latest spec (the trainer does it; operators and up).

Trains on the spec's data set: its latest version, or the one given by --dataset NAME@VERSION or
--dataset-version VERSION. Asking again for what is trained or queued already changes nothing.
"""


def retrain_request(
    model: str, dataset: str | None, dataset_version: int | None, reason: str
) -> registry_pb2.RequestRetrainRequest:
    """The request for what was typed; a usage error when the data set options contradict each other."""
    name, number = "", 0
    if dataset:
        try:
            ref = parse_dataset_ref(dataset)
        except RefError as error:
            raise typer.BadParameter(str(error), param_hint="'--dataset'") from None
        if ref.sha256:
            raise typer.BadParameter(
                f"{dataset!r}: give the data set version by number (NAME@VERSION), not by sha256",
                param_hint="'--dataset'",
            )
        name, number = ref.name, ref.version
    if dataset_version is not None:
        if number and number != dataset_version:
            raise typer.BadParameter(
                f"--dataset {dataset} and --dataset-version {dataset_version} name different versions; give one",
                param_hint="'--dataset-version'",
            )
        number = dataset_version
    return registry_pb2.RequestRetrainRequest(
        model=model, dataset=name, dataset_version=number, reason=reason
    )


def retrain(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(metavar="NAME", help="The model; it must have a spec.")],
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            "-d",
            metavar="DATASET[@VERSION]",
            help="The spec's data set, at this version (the latest if bare).",
        ),
    ] = None,
    dataset_version: Annotated[
        int | None,
        typer.Option(
            "--dataset-version", min=1, metavar="VERSION", help="This version of the spec's data set."
        ),
    ] = None,
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="Why; kept in the event and the training run.")
    ] = "",
) -> None:
    cli = cli_context(ctx)
    request = retrain_request(model, dataset, dataset_version, reason)

    async def work():
        async with cli.registry() as registry:
            return await cli.call(registry.RequestRetrain, request)

    response: registry_pb2.RequestRetrainResponse = cli.run("retrain", work, **{"mlops.model.name": model})
    if cli.output.json_mode:
        cli.output.json(response)
        return
    output = cli.output
    output.line(f"retraining of {response.model} asked for")
    output.fields(
        [
            ("spec version", version(response.spec_version)),
            ("data set", f"{response.dataset} v{response.dataset_version}"),
            ("reason", request.reason or MISSING),
            ("requested by", response.requested_by or MISSING),
            ("event", response.event_id),
        ]
    )
    output.notice(f"follow it with `mlops runs list --model {response.model}`")
