"""Models at a glance, one model's versions, and one version: metrics, gates, slices, signature,
lineage as a graph, the alias ledger and the trace it was made in."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.routing import Route

from mlops.deployer.v1 import deployer_pb2
from mlops.errors import MlopsError
from mlops.jaeger import TRACE_TAG
from mlops.monitor.v1 import monitor_pb2
from mlops.registry.v1 import registry_pb2
from services.console.app import caller, render
from services.console.filters import rollout_state
from services.console.svg import Graph, Node, lineage_graph

MAX_SPECS = 1000
SHOWN_MODELS = 50
MAX_VERSIONS = 100
CONCURRENT_SUMMARIES = 8


async def _or_none(call):
    """A panel that a service could not fill says so instead of failing the page."""
    try:
        return await call, ""
    except MlopsError as error:
        return None, error.message


async def model_summary(person, name: str) -> dict:
    aliases, rollouts, health = await asyncio.gather(
        _or_none(person.call("registry", "ListAliases", registry_pb2.ListAliasesRequest(model=name))),
        _or_none(
            person.call("deployer", "ListRollouts", deployer_pb2.ListRolloutsRequest(model=name, page_size=1))
        ),
        _or_none(person.call("monitor", "GetModelHealth", monitor_pb2.GetModelHealthRequest(model=name))),
    )
    by_alias = {a.alias: a.version for a in (aliases[0].aliases if aliases[0] else [])}
    latest = rollouts[0].rollouts[0] if rollouts[0] and rollouts[0].rollouts else None
    return {
        "name": name,
        "aliases": by_alias,
        "rollout": latest,
        "health": list(health[0].versions) if health[0] else [],
        "problems": [m for m in (aliases[1], rollouts[1], health[1]) if m],
    }


async def index(request: Request):
    """Up to SHOWN_MODELS models (those whose name holds `?q=`), each summarised by three calls, a
    few models at a time so that a platform with hundreds of models does not flood the services."""
    person = caller(request)
    specs = await person.call(
        "registry", "ListModelSpecs", registry_pb2.ListModelSpecsRequest(page_size=MAX_SPECS)
    )
    query = request.query_params.get("q", "").strip()
    matching = sorted((s for s in specs.specs if query in s.model), key=lambda s: -s.applied_at.seconds)
    gate = asyncio.Semaphore(CONCURRENT_SUMMARIES)

    async def summary(name: str) -> dict:
        async with gate:
            return await model_summary(person, name)

    summaries = await asyncio.gather(*(summary(s.model) for s in matching[:SHOWN_MODELS]))
    feed = request.app.state.feed
    return render(
        request,
        "models.html",
        models=summaries,
        query=query,
        hidden=max(0, len(matching) - SHOWN_MODELS),
        specs={s.model: s for s in specs.specs},
        recent=feed.recent(20) if feed else [],
    )


async def model_page(request: Request):
    name = request.path_params["name"]
    person = caller(request)
    versions, summary = await asyncio.gather(
        person.call(
            "registry",
            "ListModelVersions",
            registry_pb2.ListModelVersionsRequest(model=name, page_size=MAX_VERSIONS),
        ),
        model_summary(person, name),
    )
    rollouts, problem = await _or_none(
        person.call("deployer", "ListRollouts", deployer_pb2.ListRolloutsRequest(model=name, page_size=20))
    )
    return render(
        request,
        "model.html",
        name=name,
        versions=sorted(versions.model_versions, key=lambda v: -v.version),
        summary=summary,
        rollouts=list(rollouts.rollouts) if rollouts else [],
        problem=problem,
        trace_tag=TRACE_TAG,
    )


def lineage(answer: registry_pb2.GetLineageResponse) -> Graph:
    """Data set versions → run → model version → evaluations → deployments → aliases."""
    graph = Graph()
    version = answer.model_version
    here = graph.add(
        Node(
            f"v{version.version}",
            f"{version.model} v{version.version}",
            "version",
            detail=version.origin or "trained",
        )
    )
    for ancestor in answer.dataset_ancestors:
        graph.add(
            Node(
                f"d{ancestor.version}",
                f"{ancestor.dataset} v{ancestor.version}",
                "dataset",
                detail=ancestor.sha256[:12],
            )
        )
    if answer.HasField("dataset_version"):
        data = answer.dataset_version
        graph.add(
            Node(
                f"d{data.version}",
                f"{data.dataset} v{data.version}",
                "dataset",
                detail=f"{data.row_count} rows",
            )
        )
        for ancestor in answer.dataset_ancestors:
            if ancestor.version != data.version:
                graph.edges.append((f"d{ancestor.version}", f"d{data.version}"))
    if answer.HasField("run") and answer.run.run_id:
        run = answer.run
        graph.add(
            Node(
                f"r{run.run_id}",
                f"run {run.run_id[:8]}",
                "run",
                href=f"/runs/{run.run_id}",
                detail=run.source or "trainer",
            )
        )
        if answer.HasField("dataset_version"):
            graph.edges.append((f"d{answer.dataset_version.version}", f"r{run.run_id}"))
        graph.edges.append((f"r{run.run_id}", here.id))
    elif answer.HasField("dataset_version"):
        graph.edges.append((f"d{answer.dataset_version.version}", here.id))
    for evaluation in answer.evaluations:
        node = graph.add(
            Node(
                f"e{evaluation.evaluation_id}",
                f"evaluation {evaluation.evaluation_id[:8]}",
                "evaluation",
                detail="passed" if evaluation.passed else "failed",
            )
        )
        graph.edges.append((here.id, node.id))
    for deployment in answer.deployments:
        node = graph.add(
            Node(
                f"p{deployment.rollout_id}",
                f"rollout {deployment.rollout_id[:8]}",
                "deployment",
                href=f"/rollouts/{deployment.model}/{deployment.rollout_id}",
                detail=f"{rollout_state(deployment.state)} {deployment.traffic_percent}%",
            )
        )
        graph.edges.append((here.id, node.id))
    for alias in sorted({c.alias for c in answer.alias_changes if c.to_version == version.version}):
        node = graph.add(
            Node(f"a{alias}", alias, "alias", detail="current" if alias in version.aliases else "earlier")
        )
        graph.edges.append((here.id, node.id))
    return graph


async def version_page(request: Request):
    name, number = request.path_params["name"], int(request.path_params["version"])
    person = caller(request)
    answer, history = await asyncio.gather(
        person.call("registry", "GetLineage", registry_pb2.GetLineageRequest(model=name, version=number)),
        _or_none(
            person.call(
                "registry", "GetAliasHistory", registry_pb2.GetAliasHistoryRequest(model=name, page_size=200)
            )
        ),
    )
    ledger = list(history[0].changes) if history[0] else list(answer.alias_changes)
    evaluations = sorted(answer.evaluations, key=lambda e: -e.evaluated_at.seconds)
    return render(
        request,
        "version.html",
        v=answer.model_version,
        answer=answer,
        evaluation=evaluations[0] if evaluations else None,
        evaluations=evaluations,
        graph=lineage_graph(lineage(answer)),
        ledger=ledger,
        trace_id=answer.model_version.tags.get(TRACE_TAG, ""),
        trace_tag=TRACE_TAG,
    )


routes = [
    Route("/", index),
    Route("/models/{name}", model_page),
    Route("/models/{name}/versions/{version:int}", version_page),
]
