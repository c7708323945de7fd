"""Training runs: the list, one run's params and per-epoch curves, and several runs on one chart."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.routing import Route

from mlops.registry.v1 import registry_pb2
from services.console.app import caller, render
from services.console.svg import Series, line_chart

MAX_RUNS = 100
MAX_COMPARED = 8


def curves(runs: list[registry_pb2.Run], metric: str, *, label=lambda run: run.run_id[:8]) -> list[Series]:
    return [
        Series(label(run), [(h.epoch, h.metrics[metric]) for h in run.history if metric in h.metrics])
        for run in runs
    ]


def epoch_metrics(runs: list[registry_pb2.Run]) -> list[str]:
    names = sorted({name for run in runs for h in run.history for name in h.metrics})
    # the losses first: what people look at to judge a run
    return sorted(names, key=lambda n: (0 if "loss" in n else 1, n))


async def runs_page(request: Request):
    person = caller(request)
    model = request.query_params.get("model", "")
    listed = await person.call(
        "registry", "ListRuns", registry_pb2.ListRunsRequest(model=model, page_size=MAX_RUNS)
    )
    runs = sorted(listed.runs, key=lambda r: -r.started_at.seconds)
    chosen = request.query_params.getlist("compare")[:MAX_COMPARED]
    compared = await asyncio.gather(
        *(
            person.call("registry", "GetRun", registry_pb2.GetRunRequest(run_id=i, include_history=True))
            for i in chosen
        )
    )
    names = epoch_metrics(list(compared))
    metric = request.query_params.get("metric") or (names[0] if names else "")
    chart = (
        line_chart(
            curves(
                list(compared),
                metric,
                label=lambda r: f"{r.model} v{r.model_version or '?'} ({r.run_id[:8]})",
            ),
            title=metric,
            x_label="epoch",
        )
        if compared
        else None
    )
    return render(
        request, "runs.html", runs=runs, model=model, chosen=chosen, metrics=names, metric=metric, chart=chart
    )


async def run_page(request: Request):
    person = caller(request)
    run = await person.call(
        "registry",
        "GetRun",
        registry_pb2.GetRunRequest(run_id=request.path_params["run_id"], include_history=True),
    )
    charts = [
        (name, line_chart(curves([run], name), title=name, x_label="epoch")) for name in epoch_metrics([run])
    ]
    return render(request, "run.html", run=run, charts=charts)


routes = [Route("/runs", runs_page), Route("/runs/{run_id}", run_page)]
