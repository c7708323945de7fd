"""The console's web application: sign-in, the pages, the actions and the live feed, built once by
the composition root (or a test) around a way to call the services and an optional event feed."""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from mlops.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MlopsError,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from mlops.registry.v1 import registry_pb2
from services.console import auth, filters
from services.console.clients import Caller, may_operate
from services.console.settings import ConsoleSettings

log = logging.getLogger("mlops.console")
HERE = Path(__file__).parent
OPEN_PATHS = ("/login", "/logout", "/healthz", "/readyz", "/static/")
STATUS = {
    NotFound: 404,
    PermissionDenied: 403,
    InvalidArgument: 400,
    FailedPrecondition: 409,
    Unavailable: 503,
    DeadlineExceeded: 504,
}

templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescapes .html
filters.install(templates.env)


def status_of(error: MlopsError) -> int:
    for kind, status in STATUS.items():
        if isinstance(error, kind):
            return status
    return 502


def caller(request: Request) -> Caller:
    """The services as the signed-in person."""
    return request.app.state.caller_for(request.state.session.token)


def render(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
    session = getattr(request.state, "session", None)
    context.update(
        request=request,
        session=session,
        role=session.role if session else None,
        csrf=session.csrf if session else "",
        notice=request.query_params.get("notice", ""),
        error=context.get("error") or request.query_params.get("error", ""),
        jaeger_ui=request.app.state.settings.jaeger_ui_url,
        events_on=request.app.state.feed is not None,
    )
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def back(path: str, **message: str) -> RedirectResponse:
    """After an action: back to the page, with what happened (no secrets ever go in it)."""
    query = urllib.parse.urlencode({k: v[:400] for k, v in message.items() if v})
    return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)


class Gate(BaseHTTPMiddleware):
    """Sessions on every page but sign-in, health and static files; an access log without queries
    (a sign-in link carries its token in the query)."""

    async def dispatch(self, request: Request, call_next) -> Response:
        started = time.perf_counter()
        path = request.url.path
        if not path.startswith(OPEN_PATHS):
            session = auth.session_of(request)
            if session is None:
                if request.method == "GET" and path != "/events":
                    return RedirectResponse("/login", status_code=303)
                return JSONResponse({"error": "sign in first: /login"}, status_code=401)
            request.state.session = session
        else:
            request.state.session = auth.session_of(request)
        try:
            response = await call_next(request)
        except MlopsError as error:
            response = render(request, "error.html", status_of(error), error=error.message)
        log.info(
            "%s %s %d %.1fms",
            request.method,
            path,
            response.status_code,
            (time.perf_counter() - started) * 1e3,
        )
        return response


async def login(request: Request) -> Response:
    """`/login?token=T` (or the form's POST): check the token with a registry read made with it."""
    if request.method == "POST":
        form = await request.form()
        token = str(form.get("token", "")).strip()
    else:
        token = request.query_params.get("token", "").strip()
    if not token:
        return render(request, "login.html")
    person = request.app.state.caller_for(token)
    try:
        await person.call(
            "registry", "ListModelSpecs", registry_pb2.ListModelSpecsRequest(page_size=1), cached=False
        )
    except (PermissionDenied, MlopsError) as error:
        unknown = not isinstance(error, Unavailable | DeadlineExceeded)
        message = "that token was not accepted by the registry" if unknown else error.message
        return render(request, "login.html", 401 if unknown else 503, error=message)
    operator = await may_operate(person)
    sessions: auth.Sessions = request.app.state.sessions
    session_id = sessions.create(token, operator=operator)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        auth.COOKIE,
        session_id,
        max_age=request.app.state.settings.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=request.app.state.settings.https,
        path="/",
    )
    log.info("signed in as %s", "operator" if operator else "viewer")
    return response


async def logout(request: Request) -> Response:
    request.app.state.sessions.drop(request.cookies.get(auth.COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/")
    return response


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready once serving: pages need the services, which each page reports on; the event feed's
    state is told here but does not hold the console back (its pages say when the topics are away)."""
    feed = request.app.state.feed
    events = "off" if feed is None else ("reading" if feed.ready else f"starting {feed.error}".strip())
    return JSONResponse({"status": "ready", "events": events})


async def _refused(request: Request, error: Exception) -> Response:
    assert isinstance(error, MlopsError)
    return render(request, "error.html", status_of(error), error=error.message)


def _lifespan(starting: list, stopping: list):
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        for hook in starting:
            await hook()
        try:
            yield
        finally:
            for hook in stopping:
                await hook()

    return lifespan


def build_app(
    settings: ConsoleSettings,
    caller_for: Callable[[str], Caller],
    *,
    feed=None,
    jaeger=None,
    on_startup: list | None = None,
    on_shutdown: list | None = None,
) -> Starlette:
    """The application: `caller_for(token)` calls the services as that person; `feed` (events.Feed)
    gives the live events and dead letters, None where the console reads no topics; `jaeger` reads
    traces (mlops.jaeger.JaegerClient)."""
    from services.console import alerts
    from services.console.pages import events, models, rollouts, runs, traces

    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["GET", "POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        *models.routes,
        *runs.routes,
        *rollouts.routes,
        *events.routes,
        *traces.routes,
        *alerts.routes,
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Gate)],
        exception_handlers={MlopsError: _refused},
        lifespan=_lifespan(on_startup or [], on_shutdown or []),
    )
    app.state.settings = settings
    app.state.caller_for = caller_for
    app.state.sessions = auth.Sessions(settings.session_ttl_s, settings.max_sessions)
    app.state.feed = feed
    app.state.jaeger = jaeger
    return app
