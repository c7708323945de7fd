"""`mlops models register` and `mlops models download`: files to and from the registry in chunks, a
model file registered and a version's artifact downloaded, checked against the sha256 it was stored
with."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import typer

from mlops.cli.context import CliContext, cli_context
from mlops.cli.output import short_sha
from mlops.cli.refs import RefError, parse_dataset_ref, parse_labels, parse_model_ref
from mlops.errors import DeadlineExceeded, IntegrityError, InvalidArgument, Unavailable
from mlops.grpc import raise_typed
from mlops.registry.v1 import registry_pb2
from mlops.store.base import atomic_write, sha256_of_file

UPLOAD_CHUNK = 1 << 20
"""Chunks a file travels in (the registry takes at most 4 MiB each)."""
MIN_TIMEOUT_S = 300.0
"""Registration reads the data set and scores the model on it: longer than a lookup."""


async def register_parts(
    header: registry_pb2.RegisterModelRequest.Header, path: Path
) -> AsyncIterator[registry_pb2.RegisterModelRequest]:
    """The header, with the file's size and sha256 so the registry can check them, then the bytes."""
    header.sha256, header.size_bytes = sha256_of_file(path)
    header.file_name = header.file_name or path.name
    yield registry_pb2.RegisterModelRequest(header=header)
    with path.open("rb") as handle:
        while chunk := handle.read(UPLOAD_CHUNK):
            yield registry_pb2.RegisterModelRequest(chunk=chunk)


async def register_file(
    cli: CliContext, registry, header: registry_pb2.RegisterModelRequest.Header, path: Path
) -> registry_pb2.RegisterModelVersionResponse:
    timeout = max(cli.timeout_s, MIN_TIMEOUT_S)
    try:
        with raise_typed():
            return await registry.RegisterModel(register_parts(header, path), timeout=timeout)
    except Unavailable as error:
        raise Unavailable(f"the registry at {cli.registry_addr} is unavailable: {error.message}") from None
    except DeadlineExceeded:
        raise DeadlineExceeded(
            f"the registry at {cli.registry_addr} did not finish registering within {timeout:g}s"
        ) from None


async def download_file(
    cli: CliContext, registry, request: registry_pb2.DownloadArtifactRequest, dest: Path
) -> registry_pb2.ArtifactChunk:
    """Write the artifact to `dest` (atomically, only once its sha256 matches); its first chunk's facts."""
    first: registry_pb2.ArtifactChunk | None = None
    digest = hashlib.sha256()
    parts: list[bytes] = []
    timeout = max(cli.timeout_s, MIN_TIMEOUT_S)
    with raise_typed():
        async for chunk in registry.DownloadArtifact(request, timeout=timeout):
            if first is None:
                first = registry_pb2.ArtifactChunk(
                    size_bytes=chunk.size_bytes, sha256=chunk.sha256, uri=chunk.uri
                )
            digest.update(chunk.data)
            parts.append(chunk.data)
    if first is None:
        raise InvalidArgument("the registry sent no bytes")
    size = sum(len(p) for p in parts)
    if digest.hexdigest() != first.sha256 or size != first.size_bytes:
        raise IntegrityError(
            f"the download of {first.uri} is not what was stored: {size} bytes hashing to "
            f"{digest.hexdigest()}, expected {first.size_bytes} bytes with sha256 {first.sha256}; nothing written"
        )

    def write(handle) -> None:
        for part in parts:
            handle.write(part)

    atomic_write(dest, write)
    return first


def register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The model's name.")],
    file: Annotated[
        Path, typer.Argument(metavar="FILE.onnx", exists=True, dir_okay=False, help="The ONNX model.")
    ],
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset", metavar="D[@V]", help="The data set it is judged on; the spec's if absent."
        ),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option("--label", metavar="COL", help="The column it predicts; the spec's if absent."),
    ] = None,
    run: Annotated[str | None, typer.Option("--run", metavar="RUN_ID", help="The run that made it.")] = None,
    tags: Annotated[
        list[str] | None, typer.Option("--tag", metavar="KEY=VALUE", help="A tag of the version; repeatable.")
    ] = None,
    spec_file: Annotated[
        Path | None,
        typer.Option("--spec", metavar="FILE", exists=True, dir_okay=False, help="A spec to apply first."),
    ] = None,
    description: Annotated[str, typer.Option("--description", help="Free text for the version.")] = "",
) -> None:
    """Register an ONNX model trained elsewhere as NAME's next version (admins).

    The registry reads its signature against the data set, profiles it there and announces it as
    trained, so the evaluator gates it against the champion. A model with no spec gets one with the
    platform's defaults and `training.external: true`.
    """
    from mlops.cli.apply import read_specs

    cli = cli_context(ctx)
    try:
        to_tag = parse_labels(tags or [])
        ref = parse_dataset_ref(dataset) if dataset else None
    except RefError as error:
        raise typer.BadParameter(str(error).replace("label", "tag")) from None
    if ref is not None and ref.sha256:
        raise typer.BadParameter("name the data set version by number: D@V", param_hint="'--dataset'")
    header = registry_pb2.RegisterModelRequest.Header(
        model=name,
        dataset=ref.name if ref else "",
        dataset_version=ref.version if ref else 0,
        label=label or "",
        run_id=run or "",
        tags=to_tag,
        description=description,
    )
    if spec_file is not None:
        documents = read_specs([str(spec_file)])
        if len(documents) != 1:
            raise typer.BadParameter(
                f"{spec_file} holds {len(documents)} specs; give one", param_hint="'--spec'"
            )
        header.spec.CopyFrom(documents[0].spec)

    async def work():
        async with cli.registry() as registry:
            return await register_file(cli, registry, header, file)

    response = cli.run("models register", work, **{"mlops.model.name": name})
    mv = response.model_version
    if cli.output.json_mode:
        cli.output.json(response)
        return
    if not response.created:
        cli.output.line(
            f"{mv.model} v{mv.version} already holds these bytes ({short_sha(mv.artifact_sha256)}); nothing new"
        )
        return
    cli.output.line(
        f"registered {mv.model} v{mv.version} ({mv.signature.task}, judged on {mv.dataset} v{mv.dataset_version}, "
        f"sha256 {short_sha(mv.artifact_sha256)}); the evaluator now gates it against the champion"
    )


def download(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(metavar="NAME[@VERSION|@ALIAS]", help="The model version; latest if bare.")
    ],
    out: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE", help="Where to write the ONNX file.")
    ],
) -> None:
    """Download a model version's ONNX file, checked against the sha256 it was registered with."""
    cli = cli_context(ctx)
    try:
        parsed = parse_model_ref(ref)
    except RefError as error:
        raise typer.BadParameter(str(error), param_hint="NAME[@VERSION|@ALIAS]") from None
    selector = registry_pb2.DownloadArtifactRequest.ModelVersionArtifact(
        model=parsed.name, **parsed.selector()
    )
    request = registry_pb2.DownloadArtifactRequest(model_version=selector)

    async def work():
        async with cli.registry() as registry:
            return await download_file(cli, registry, request, out)

    first = cli.run("models download", work, **{"mlops.model.name": parsed.name})
    if cli.output.json_mode:
        cli.output.json(
            {"file": str(out), "size_bytes": first.size_bytes, "sha256": first.sha256, "uri": first.uri}
        )
        return
    cli.output.line(f"wrote {out} ({first.size_bytes} bytes, sha256 {short_sha(first.sha256)}) from {parsed}")
