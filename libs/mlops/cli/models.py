"""`mlops models`: list, search and tag model versions, show a version, draw a version's lineage,
register a model trained elsewhere and download a version's file."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.markup import escape
from rich.tree import Tree

from mlops.cli.context import CliContext, cli_context, current_user
from mlops.cli.output import (
    MISSING,
    enum_name,
    mapping,
    number,
    short_sha,
    timestamp,
    version,
)
from mlops.cli.query import ALLOWED, QueryError, parse_search
from mlops.cli.refs import ModelRef, RefError, parse_labels, parse_model_ref
from mlops.cli.transfer import download, register
from mlops.errors import NotFound
from mlops.events.v1 import deployment_pb2
from mlops.registry.v1 import registry_pb2

app = typer.Typer(
    help="Inspect, search and tag models, their versions and their lineage.", no_args_is_help=True
)


def model_ref(text: str, *, require_version: bool = False) -> ModelRef:
    try:
        return parse_model_ref(text, require_version=require_version)
    except RefError as error:
        hint = "NAME@VERSION" if require_version else "NAME[@VERSION|@ALIAS]"
        raise typer.BadParameter(str(error), param_hint=hint) from None


async def _latest_or_none(cli: CliContext, registry, model: str) -> registry_pb2.ModelVersion | None:
    try:
        return await cli.call(registry.GetModelVersion, registry_pb2.GetModelVersionRequest(model=model))
    except NotFound:
        return None


@app.command("list")
def list_(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="List this model's versions instead of the models.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="At most this many rows; 0 for all.")] = 50,
) -> None:
    """List models (their latest spec, latest version and aliases), or the versions of one model."""
    cli = cli_context(ctx)
    if name:
        _list_versions(cli, name, limit)
        return

    async def work():
        async with cli.registry() as registry:
            specs = await cli.paginate(
                registry.ListModelSpecs, registry_pb2.ListModelSpecsRequest(), "specs", limit
            )
            if cli.output.json_mode:
                return specs, [], []
            aliases = await cli.paginate(
                registry.ListAliases, registry_pb2.ListAliasesRequest(), "aliases", 0
            )
            latest = await asyncio.gather(*(_latest_or_none(cli, registry, s.model) for s in specs.specs))
            return specs, aliases.aliases, latest

    specs, aliases, latest = cli.run("models list", work)
    output = cli.output
    if output.json_mode:
        output.json(specs)
        return
    by_model: dict[str, list[str]] = {}
    for alias in aliases:
        by_model.setdefault(alias.model, []).append(f"{alias.alias}→v{alias.version}")
    output.table(
        ["model", "spec", "data set", "task", "latest version", "aliases", "applied at"],
        (
            [
                s.model,
                version(s.version),
                s.spec.spec.dataset or MISSING,
                s.spec.spec.task or MISSING,
                version(mv.version) if mv else MISSING,
                ", ".join(by_model.get(s.model, [])) or MISSING,
                timestamp(s.applied_at),
            ]
            for s, mv in zip(specs.specs, latest, strict=True)
        ),
        title="models",
    )
    if specs.next_page_token:
        output.notice(f"more models exist; raise --limit (now {limit}) to see them")


def _list_versions(cli: CliContext, name: str, limit: int) -> None:
    async def work():
        async with cli.registry() as registry:
            request = registry_pb2.ListModelVersionsRequest(model=name)
            return await cli.paginate(registry.ListModelVersions, request, "model_versions", limit)

    response = cli.run("models list", work, **{"mlops.model.name": name})
    output = cli.output
    if output.json_mode:
        output.json(response)
        return
    output.table(
        ["version", "aliases", "data set", "run", "metrics", "tags", "created"],
        (
            [
                version(mv.version),
                ", ".join(mv.aliases) or MISSING,
                f"{mv.dataset} v{mv.dataset_version}" if mv.dataset else MISSING,
                mv.run_id or MISSING,
                mapping(mv.metrics),
                mapping(mv.tags),
                timestamp(mv.created_at),
            ]
            for mv in response.model_versions
        ),
        title=f"versions of {name}",
    )
    if response.next_page_token:
        output.notice(f"more versions exist; raise --limit (now {limit}) to see them")


@app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(metavar="NAME[@VERSION|@ALIAS]", help="The model version; latest if bare.")
    ],
) -> None:
    """Show a model version: signature, metrics, tags, run, data set version, aliases."""
    cli = cli_context(ctx)
    parsed = model_ref(ref)

    async def work():
        async with cli.registry() as registry:
            request = registry_pb2.GetModelVersionRequest(model=parsed.name, **parsed.selector())
            return await cli.call(registry.GetModelVersion, request)

    mv: registry_pb2.ModelVersion = cli.run("models show", work, **{"mlops.model.name": parsed.name})
    output = cli.output
    if output.json_mode:
        output.json(mv)
        return
    signature = mv.signature
    output.fields(
        [
            ("model", mv.model),
            ("version", version(mv.version)),
            ("aliases", ", ".join(mv.aliases) or MISSING),
            ("run", mv.run_id or MISSING),
            ("spec version", version(mv.spec_version)),
            (
                "data set",
                f"{mv.dataset} v{mv.dataset_version} ({short_sha(mv.dataset_sha256)})"
                if mv.dataset
                else MISSING,
            ),
            ("origin", mv.origin or "trainer"),
            ("artifact", mv.artifact_uri or MISSING),
            ("artifact sha256", mv.artifact_sha256 or MISSING),
            ("artifact size", f"{mv.artifact_size_bytes} bytes" if mv.artifact_size_bytes else MISSING),
            ("profile", mv.profile_uri or MISSING),
            ("task", signature.task or MISSING),
            ("onnx opset", signature.onnx_opset or MISSING),
            ("features", ", ".join(signature.feature_names) or MISSING),
            ("classes", ", ".join(signature.class_labels) or MISSING),
            ("description", mv.description or MISSING),
            ("created", timestamp(mv.created_at)),
        ]
    )
    output.table(
        ["tensor", "direction", "datatype", "shape"],
        [
            *([t.name, "input", t.datatype, list(t.shape)] for t in signature.inputs),
            *([t.name, "output", t.datatype, list(t.shape)] for t in signature.outputs),
        ],
        title="signature",
    )
    output.table(
        ["metric", "value"], ([k, number(v)] for k, v in sorted(mv.metrics.items())), title="metrics"
    )
    output.table(["tag", "value"], sorted(mv.tags.items()), title="tags")


SEARCH_HELP = f"""Find model versions by metrics, tags, alias, data set and run.

EXPRESSION: {ALLOWED}.
Example: mlops models search "metrics.accuracy > 0.9 and tags.team = 'risk'" --order-by "metrics.accuracy desc"
"""


@app.command("search", help=SEARCH_HELP)
def search(
    ctx: typer.Context,
    expression: Annotated[
        str, typer.Argument(metavar="EXPRESSION", help="What to match; empty for every version.")
    ] = "",
    models: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Only this model's versions; repeatable.")
    ] = None,
    order_by: Annotated[
        str,
        typer.Option(
            "--order-by",
            metavar="FIELD [asc|desc]",
            help="created_at (the default, newest first), version, or metrics.<name>.",
        ),
    ] = "",
    limit: Annotated[int, typer.Option("--limit", min=0, help="At most this many rows; 0 for all.")] = 50,
) -> None:
    cli = cli_context(ctx)
    try:
        request = parse_search(expression)
    except QueryError as error:
        raise typer.BadParameter(str(error), param_hint="EXPRESSION") from None
    request.models.extend(models or [])
    request.order_by = order_by

    async def work():
        async with cli.registry() as registry:
            return await cli.paginate(registry.SearchModelVersions, request, "model_versions", limit)

    response: registry_pb2.SearchModelVersionsResponse = cli.run("models search", work)
    output = cli.output
    if output.json_mode:
        output.json(response)
        return
    output.table(
        ["model", "version", "aliases", "data set", "metrics", "tags", "created"],
        (
            [
                mv.model,
                version(mv.version),
                ", ".join(mv.aliases) or MISSING,
                f"{mv.dataset} v{mv.dataset_version}" if mv.dataset else MISSING,
                mapping(mv.metrics),
                mapping(mv.tags),
                timestamp(mv.created_at),
            ]
            for mv in response.model_versions
        ),
        title="model versions found",
    )
    if response.next_page_token:
        output.notice(f"more versions match; raise --limit (now {limit}) to see them")


@app.command("tag")
def tag(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The model's name.")],
    at_version: Annotated[int, typer.Argument(metavar="VERSION", min=1, help="The version to tag.")],
    tags: Annotated[
        list[str] | None, typer.Argument(metavar="KEY=VALUE", help="Tags to set (overwritten if set).")
    ] = None,
    remove: Annotated[
        list[str] | None, typer.Option("--remove", metavar="KEY", help="A tag to remove; repeatable.")
    ] = None,
) -> None:
    """Set and remove a model version's tags (admins); what is removed goes first, then what is set."""
    cli = cli_context(ctx)
    try:
        to_set = parse_labels(tags or [])
    except RefError as error:
        raise typer.BadParameter(str(error).replace("label", "tag"), param_hint="KEY=VALUE") from None
    if not to_set and not remove:
        raise typer.BadParameter("nothing to change: give KEY=VALUE tags to set and/or --remove KEY")

    async def work():
        async with cli.registry() as registry:
            request = registry_pb2.UpdateModelVersionTagsRequest(
                model=name,
                version=at_version,
                set_tags=to_set,
                remove_tags=remove or [],
                actor=current_user(),
            )
            return await cli.call(registry.UpdateModelVersionTags, request)

    mv: registry_pb2.ModelVersion = cli.run(
        "models tag", work, **{"mlops.model.name": name, "mlops.model.version": at_version}
    )
    if cli.output.json_mode:
        cli.output.json(mv)
        return
    cli.output.line(f"{mv.model} v{mv.version} tags: {mapping(mv.tags)}")


@app.command("lineage")
def lineage(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(metavar="NAME@VERSION", help="The model version (an alias works too).")
    ],
    max_ancestors: Annotated[
        int, typer.Option("--max-ancestors", min=0, help="Data set ancestors to follow; 0 for all.")
    ] = 0,
) -> None:
    """How a model version came to be and what happened to it since, as a tree."""
    cli = cli_context(ctx)
    parsed = model_ref(ref)

    async def work():
        async with cli.registry() as registry:
            request = registry_pb2.GetLineageRequest(
                model=parsed.name, max_dataset_ancestors=max_ancestors, **parsed.selector()
            )
            return await cli.call(registry.GetLineage, request)

    response: registry_pb2.GetLineageResponse = cli.run(
        "models lineage", work, **{"mlops.model.name": parsed.name}
    )
    if cli.output.json_mode:
        cli.output.json(response)
        return
    cli.output.print(lineage_tree(response))


def _add(parent: Tree, text: str) -> Tree:
    return parent.add(escape(text))


def lineage_tree(response: registry_pb2.GetLineageResponse) -> Tree:
    """The lineage as a rich tree: data → run → version → evaluations, rollouts, aliases, drift."""
    mv = response.model_version
    aliases = f" [{', '.join(mv.aliases)}]" if mv.aliases else ""
    root = Tree(
        f"[bold]{escape(mv.model)} v{mv.version}[/]{escape(aliases)}  created {timestamp(mv.created_at)}"
    )

    if response.spec.version:
        spec = response.spec
        _add(
            root,
            f"spec v{spec.version} ({short_sha(spec.sha256)}), applied by {spec.applied_by or MISSING} "
            f"at {timestamp(spec.applied_at)}",
        )

    data = response.dataset_version
    if data.version:
        node = _add(
            root,
            f"data set {data.dataset} v{data.version} ({short_sha(data.sha256)}), "
            f"{data.row_count} rows, committed by {data.committed_by or MISSING} at {timestamp(data.committed_at)}",
        )
        _add(node, data.uri)
        for ancestor in response.dataset_ancestors:
            node = _add(
                node,
                f"parent {ancestor.dataset} v{ancestor.version} ({short_sha(ancestor.sha256)}), "
                f"{ancestor.row_count} rows, committed {timestamp(ancestor.committed_at)}",
            )
    elif mv.dataset:
        _add(root, f"data set {mv.dataset} v{mv.dataset_version} ({short_sha(mv.dataset_sha256)})")

    run = response.run
    if run.run_id:
        status = enum_name(registry_pb2.RunStatus, run.status, "RUN_STATUS_")
        node = _add(
            root, f"run {run.run_id}: {status}, {timestamp(run.started_at)} → {timestamp(run.ended_at)}"
        )
        if run.params:
            _add(node, f"params: {mapping(run.params)}")
        if run.metrics:
            _add(node, f"metrics: {mapping(run.metrics)}")
        if run.history:
            _add(node, f"{len(run.history)} epochs")
        if run.error:
            _add(node, f"error: {run.error}")

    node = _add(root, f"evaluations ({len(response.evaluations)})")
    for evaluation in response.evaluations:
        verdict = "passed" if evaluation.passed else "failed"
        champion = f" vs champion v{evaluation.champion_version}" if evaluation.champion_version else ""
        child = _add(
            node,
            f"{evaluation.evaluation_id}: {verdict}{champion}, {evaluation.primary_metric}="
            f"{number(evaluation.metrics.get(evaluation.primary_metric, 0.0))} at {timestamp(evaluation.evaluated_at)}",
        )
        for gate in evaluation.gates:
            _add(
                child,
                f"{'✓' if gate.passed else '✗'} {gate.gate}: {number(gate.observed)} (bound {number(gate.threshold)})",
            )

    node = _add(root, f"deployments ({len(response.deployments)})")
    for rollout in response.deployments:
        state = enum_name(deployment_pb2.RolloutState, rollout.state, "ROLLOUT_STATE_")
        baseline = f" over v{rollout.baseline_version}" if rollout.baseline_version else ""
        _add(
            node,
            f"{rollout.rollout_id}: {rollout.strategy}{baseline}, {state} at {rollout.traffic_percent}%, "
            f"since {timestamp(rollout.started_at)}",
        )

    node = _add(root, f"alias changes ({len(response.alias_changes)})")
    for change in response.alias_changes:
        _add(
            node,
            f"{timestamp(change.changed_at)} {change.alias}: {version(change.from_version)} → "
            f"{version(change.to_version)} by {change.actor or MISSING}"
            + (f" ({change.reason})" if change.reason else ""),
        )

    node = _add(root, f"drift events ({len(response.drift_events)})")
    for drift in response.drift_events:
        drifted = [f.feature for f in drift.features if f.drifted]
        _add(
            node,
            f"{timestamp(drift.detected_at)} {drift.method} over {drift.sample_count} samples: "
            f"{', '.join(drifted) or 'prediction drift'}",
        )
    if response.degradations:
        node = _add(root, f"degradations ({len(response.degradations)})")
        for event in response.degradations:
            _add(
                node,
                f"{timestamp(event.detected_at)} {event.metric} {number(event.observed)} "
                f"(bound {number(event.bound)}, baseline {number(event.baseline)})",
            )
    return root


app.command("register")(register)
app.command("download")(download)
