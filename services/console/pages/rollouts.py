"""Rollouts: a timeline of steps with traffic shares and the health that judged each, the actions
operators take (promote, roll back, pause, resume), and drift per feature per window."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from mlops.deployer.v1 import deployer_pb2
from mlops.errors import MlopsError
from mlops.jaeger import TRACE_TAG
from mlops.monitor.v1 import monitor_pb2
from mlops.registry.v1 import registry_pb2
from services.console import auth
from services.console.app import back, caller, render
from services.console.filters import when
from services.console.svg import Series, heat_map, line_chart

ACTIONS = {"promote": "Promote", "rollback": "Rollback", "pause": "Pause", "resume": "Resume"}
MAX_WINDOWS = 24


async def rollouts_page(request: Request):
    model = request.query_params.get("model", "")
    listed = await caller(request).call(
        "deployer", "ListRollouts", deployer_pb2.ListRolloutsRequest(model=model, page_size=100)
    )
    rollouts = sorted(listed.rollouts, key=lambda r: -r.started_at.seconds)
    return render(request, "rollouts.html", rollouts=rollouts, model=model)


def traffic_chart(rollout: deployer_pb2.Rollout):
    """Traffic share of the candidate, step by step, on seconds since the rollout began."""
    start = rollout.started_at.seconds or (rollout.history[0].progressed_at.seconds if rollout.history else 0)
    points = [
        (h.progressed_at.ToNanoseconds() / 1e9 - start, float(h.traffic_percent)) for h in rollout.history
    ]
    return line_chart(
        [Series(f"v{rollout.candidate_version} traffic %", points)],
        title="traffic share (%)",
        x_label="seconds since start",
    )


async def rollout_page(request: Request):
    person = caller(request)
    model, rollout_id = request.path_params["model"], request.path_params["rollout_id"]
    rollout = await person.call(
        "deployer",
        "GetRollout",
        deployer_pb2.GetRolloutRequest(model=model, rollout_id=rollout_id),
        cached=False,
    )
    trace_id = ""
    try:
        version = await person.call(
            "registry",
            "GetModelVersion",
            registry_pb2.GetModelVersionRequest(model=model, version=rollout.candidate_version),
        )
        trace_id = version.tags.get(TRACE_TAG, "")
    except MlopsError:
        pass
    return render(
        request,
        "rollout.html",
        r=rollout,
        history=list(rollout.history),
        chart=traffic_chart(rollout) if rollout.history else None,
        trace_id=trace_id,
        actions=ACTIONS,
    )


async def rollout_action(request: Request):
    """An operator's move, made as that person: the deployer's access table refuses viewers."""
    model, rollout_id, action = (request.path_params[k] for k in ("model", "rollout_id", "action"))
    path = f"/rollouts/{model}/{rollout_id}"
    form = await request.form()
    if not auth.csrf_ok(request, request.state.session, form.get(auth.CSRF_FIELD)):
        return render(
            request, "error.html", 403, error="the form has expired or came from elsewhere: reload the page"
        )
    if action not in ACTIONS:
        return back(path, error=f"no action {action!r}")
    reason = str(form.get("reason", "")).strip()[:200] or f"{action} from the console"
    request_ = deployer_pb2.RolloutActionRequest(model=model, rollout_id=rollout_id, reason=reason)
    try:
        done = await caller(request).call("deployer", ACTIONS[action], request_, cached=False)
    except MlopsError as error:
        return back(path, error=f"{ACTIONS[action]} refused: {error.message}")
    from services.console.filters import rollout_state

    return back(path, notice=f"{ACTIONS[action]} done: the rollout is {rollout_state(done.state)}")


def window_label(window: monitor_pb2.DriftWindow) -> str:
    return when(window.window.end)[11:19] if window.window.end.seconds else "?"


def drift_view(version: monitor_pb2.VersionDrift) -> dict:
    windows = sorted(version.windows, key=lambda w: w.window.end.seconds)[-MAX_WINDOWS:]
    columns = [window_label(w) for w in windows]
    scores: dict[tuple[str, str], float] = {}
    features: list[str] = []
    for window, column in zip(windows, columns, strict=True):
        for feature in window.features:
            if feature.feature not in features:
                features.append(feature.feature)
            scores[(feature.feature, column)] = feature.score
    start = windows[0].window.end.seconds if windows else 0
    prediction = Series(
        "prediction drift", [(w.window.end.seconds - start, w.prediction_drift_score) for w in windows]
    )
    samples = Series("samples", [(w.window.end.seconds - start, float(w.sample_count)) for w in windows])
    return {
        "version": version,
        "heat": heat_map(features, columns, scores, threshold=version.threshold or 0.2),
        "prediction": line_chart(
            [prediction], title="prediction drift", x_label="seconds", threshold=version.threshold or None
        ),
        "samples": line_chart([samples], title="samples per window", x_label="seconds"),
        "drifted": sum(1 for w in windows if w.drifted),
        "windows": windows,
    }


async def drift_page(request: Request):
    model = request.path_params["model"]
    person = caller(request)
    status = await person.call(
        "monitor", "GetDriftStatus", monitor_pb2.GetDriftStatusRequest(model=model, window_limit=MAX_WINDOWS)
    )
    health = None
    try:
        health = await person.call(
            "monitor", "GetModelHealth", monitor_pb2.GetModelHealthRequest(model=model)
        )
    except MlopsError:
        pass
    views = [drift_view(v) for v in sorted(status.versions, key=lambda v: -v.version)]
    return render(
        request, "drift.html", model=model, views=views, health=list(health.versions) if health else []
    )


routes = [
    Route("/rollouts", rollouts_page),
    Route("/rollouts/{model}/{rollout_id}", rollout_page),
    Route("/rollouts/{model}/{rollout_id}/{action}", rollout_action, methods=["POST"]),
    Route("/drift/{model}", drift_page),
]
