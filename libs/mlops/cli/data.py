"""`mlops data`: commit a snapshot (upload, then the registry records it), list and show data sets."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from mlops.cli.context import CliContext, cli_context, current_user
from mlops.cli.output import Output, mapping, message_to_dict, short_sha, timestamp, version
from mlops.cli.refs import RefError, parse_dataset_ref, parse_labels
from mlops.cli.schema import format_of
from mlops.errors import FailedPrecondition, MlopsError, NotFound, Unavailable
from mlops.registry.v1 import registry_pb2
from mlops.settings import ArtifactSettings
from mlops.telemetry import current_trace_id

app = typer.Typer(help="Commit data snapshots and inspect data sets.", no_args_is_help=True)

LARGE_FILE_BYTES = 16 << 20
"""Files from this size up show progress bars while they are read and uploaded."""


def _progress(output: Output, size: int) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=output.err,
        transient=True,
        disable=size < LARGE_FILE_BYTES,
    )


async def _upload(settings: ArtifactSettings, dataset: str, path: Path, on_bytes) -> tuple[str, str]:
    """Store the file content-addressed; (uri, sha256)."""
    # Imported here: boto3 and the bus (with its database helpers) would slow every other command.
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    from mlops.store import open_store

    store = open_store(settings)
    try:
        ref = await store.put_file(f"datasets/{dataset}", path.name, path, on_bytes)
    except NoCredentialsError as error:
        raise FailedPrecondition(f"no credentials for the artifact store {settings.root}: {error}") from None
    except EndpointConnectionError as error:
        raise Unavailable(f"the artifact store {settings.root} cannot be reached: {error}") from None
    except (BotoCoreError, ClientError) as error:
        raise MlopsError(f"uploading {path.name} to {settings.root} failed: {error}") from None
    return ref.uri, ref.sha256


async def _commit(
    cli: CliContext,
    path: Path,
    dataset: str,
    fmt: str,
    labels: dict[str, str],
    committed_by: str,
) -> dict:
    """Upload the file and have the registry record it: the registry reads it back, checks its sha256,
    infers its schema and announces the version (DatasetVersionRecorded), which starts training."""
    size = await asyncio.to_thread(lambda: path.stat().st_size)
    span = trace.get_current_span()
    with _progress(cli.output, size) as progress:
        uploading = progress.add_task(f"uploading {path.name}", total=size)
        uri, sha256 = await _upload(
            ArtifactSettings(), dataset, path, lambda n: progress.advance(uploading, n)
        )

    async with cli.registry() as registry:
        try:
            latest = await cli.call(
                registry.GetDatasetVersion, registry_pb2.GetDatasetVersionRequest(dataset=dataset)
            )
        except NotFound:
            latest = None
        # The parent is the latest version, unless these are that version's own bytes again.
        if latest is None:
            parent = ""
        elif latest.sha256 == sha256:
            parent = latest.parent_sha256
        else:
            parent = latest.sha256
        committed_at = Timestamp()
        committed_at.GetCurrentTime()
        recorded = await cli.call(
            registry.RecordDatasetVersion,
            registry_pb2.RecordDatasetVersionRequest(
                dataset=dataset,
                uri=uri,
                sha256=sha256,
                format=fmt,
                parent_sha256=parent,
                committed_by=committed_by,
                labels=labels,
                committed_at=committed_at,
                # the commit's id: kept with the version, and the id training jobs answer to
                source_event_id=str(uuid.uuid4()),
            ),
        )
    version_recorded = recorded.dataset_version
    span.set_attribute("mlops.dataset.version", version_recorded.version)
    return {
        "recorded": recorded,
        "event_id": version_recorded.source_event_id,
        "trace_id": current_trace_id() or "",
    }


@app.command("commit")
def commit(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The snapshot file.")
    ],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="The data set's name, e.g. wine.")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv or parquet; from the file's suffix when not given.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", metavar="KEY=VALUE", help="A label; repeatable.")
    ] = None,
    committed_by: Annotated[
        str | None,
        typer.Option(
            "--committed-by",
            help="Who commits, in the event (the OS user by default); a secured registry records who you authenticated as.",
        ),
    ] = None,
) -> None:
    """Commit a snapshot: upload it content-addressed and have the registry record it (it checks the
    bytes and reads the schema); the recorded version starts training of every model whose spec
    names the data set."""
    cli = cli_context(ctx)
    try:
        labels = parse_labels(label or [])
    except RefError as error:
        raise typer.BadParameter(str(error), param_hint="'--label'") from None
    file_format = format_of(file, fmt)
    result = cli.run(
        "data commit",
        lambda: _commit(cli, file, dataset, file_format, labels, committed_by or current_user()),
        **{"mlops.dataset.name": dataset},
    )
    recorded: registry_pb2.RecordDatasetVersionResponse = result["recorded"]
    output = cli.output
    if output.json_mode:
        output.json(
            {**message_to_dict(recorded), "eventId": result["event_id"], "traceId": result["trace_id"]}
        )
        return
    dv = recorded.dataset_version
    state = "new version" if recorded.created else "already recorded (same bytes)"
    output.line(f"{dv.dataset} v{dv.version}: {state}")
    output.fields(
        [
            ("uri", dv.uri),
            ("sha256", dv.sha256),
            ("rows", f"{dv.row_count} × {len(dv.columns)} columns"),
            ("parent", _parent(dv)),
            ("commit", result["event_id"]),
            ("trace", result["trace_id"] or "-"),
        ]
    )


def _parent(dv: registry_pb2.DatasetVersion) -> str:
    if dv.parent_version:
        return f"v{dv.parent_version} ({short_sha(dv.parent_sha256)})"
    return short_sha(dv.parent_sha256)


@app.command("list")
def list_(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="List this data set's versions instead of the data sets.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="At most this many rows; 0 for all.")] = 50,
) -> None:
    """List data sets, or the versions of one, newest first."""
    cli = cli_context(ctx)

    async def work():
        async with cli.registry() as registry:
            if name:
                request = registry_pb2.ListDatasetVersionsRequest(dataset=name)
                return await cli.paginate(registry.ListDatasetVersions, request, "versions", limit)
            return await cli.paginate(
                registry.ListDatasets, registry_pb2.ListDatasetsRequest(), "datasets", limit
            )

    response = cli.run("data list", work)
    output = cli.output
    if output.json_mode:
        output.json(response)
        return
    if name:
        output.table(
            ["version", "sha256", "rows", "format", "parent", "committed by", "committed at", "labels"],
            (
                [
                    version(v.version),
                    short_sha(v.sha256),
                    v.row_count,
                    v.format,
                    _parent(v),
                    v.committed_by or "-",
                    timestamp(v.committed_at),
                    mapping(v.labels),
                ]
                for v in response.versions
            ),
            title=f"versions of {name}",
        )
    else:
        output.table(
            ["data set", "latest", "versions", "created", "updated"],
            (
                [
                    d.name,
                    version(d.latest_version),
                    d.version_count,
                    timestamp(d.created_at),
                    timestamp(d.updated_at),
                ]
                for d in response.datasets
            ),
            title="data sets",
        )
    if response.next_page_token:
        output.notice(f"more rows exist; raise --limit (now {limit}) to see them")


@app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(metavar="NAME[@VERSION|@SHA256]", help="The data set version; latest if bare.")
    ],
) -> None:
    """Show one version of a data set: where it is, its schema, its parent, who committed it."""
    cli = cli_context(ctx)
    try:
        parsed = parse_dataset_ref(ref)
    except RefError as error:
        raise typer.BadParameter(str(error), param_hint="NAME[@VERSION|@SHA256]") from None

    async def work():
        async with cli.registry() as registry:
            request = registry_pb2.GetDatasetVersionRequest(dataset=parsed.name, **parsed.selector())
            return await cli.call(registry.GetDatasetVersion, request)

    dv: registry_pb2.DatasetVersion = cli.run("data show", work, **{"mlops.dataset.name": parsed.name})
    output = cli.output
    if output.json_mode:
        output.json(dv)
        return
    output.fields(
        [
            ("data set", dv.dataset),
            ("version", version(dv.version)),
            ("uri", dv.uri),
            ("sha256", dv.sha256),
            ("format", dv.format),
            ("rows", dv.row_count),
            ("parent", _parent(dv)),
            ("committed by", dv.committed_by or "-"),
            ("committed at", timestamp(dv.committed_at)),
            ("recorded at", timestamp(dv.recorded_at)),
            ("labels", mapping(dv.labels)),
            ("source event", dv.source_event_id or "-"),
        ]
    )
    output.table(
        ["column", "type", "nullable"],
        ([c.name, c.type, "yes" if c.nullable else "no"] for c in dv.columns),
        title="columns",
    )
