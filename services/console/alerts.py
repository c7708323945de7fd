"""Which alerts are firing: read from Prometheus's HTTP API (`/api/v1/alerts`), the rules of
infra/prometheus/alerts.yml evaluated there. One bounded, timed-out read per page view; a Prometheus
away or answering nonsense is said on the page, never raised."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from starlette.requests import Request
from starlette.routing import Route

MAX_BYTES = 2_000_000
"""The largest answer read; Prometheus's alerts of this platform are a few kilobytes."""
MAX_ALERTS = 200
"""Alerts shown at most; the rest are counted."""
SEVERITY_ORDER = {"critical": 0, "warning": 1}
HIDDEN_LABELS = ("alertname", "severity")


@dataclass(frozen=True)
class Alert:
    """One alert as Prometheus holds it: pending (its `for` not yet over) or firing."""

    name: str
    state: str
    severity: str
    summary: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)
    """The labels other than alertname and severity: which service, model, topic."""
    active_at: datetime | None = None
    value: str = ""

    @property
    def firing(self) -> bool:
        return self.state == "firing"


@dataclass(frozen=True)
class Alerts:
    """What a page shows: the alerts, or why there are none to show."""

    configured: bool
    alerts: list[Alert] = field(default_factory=list)
    error: str = ""
    left_out: int = 0
    """Alerts past `MAX_ALERTS`, not shown."""

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.alerts if a.firing]

    @property
    def pending(self) -> list[Alert]:
        return [a for a in self.alerts if not a.firing]


class AnswerRefused(ValueError):
    """Prometheus answered, but not with alerts."""


def where(url: str) -> str:
    """The server's address without any credentials or query the URL may carry: safe to show."""
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")


def parse(answer: object, *, max_alerts: int = MAX_ALERTS) -> tuple[list[Alert], int]:
    """The alerts of an `/api/v1/alerts` answer, firing before pending, critical before warning;
    and how many were left out past `max_alerts`."""
    if not isinstance(answer, dict) or answer.get("status") != "success":
        kind = answer.get("errorType", "") if isinstance(answer, dict) else ""
        detail = answer.get("error", "") if isinstance(answer, dict) else "not a JSON object"
        raise AnswerRefused(f"{kind}: {detail}".strip(": ") or "status is not success")
    raw = (answer.get("data") or {}).get("alerts")
    if not isinstance(raw, list):
        raise AnswerRefused("the answer has no data.alerts list")
    alerts = [_alert(item) for item in raw if isinstance(item, dict)]
    alerts.sort(
        key=lambda a: (not a.firing, SEVERITY_ORDER.get(a.severity, 2), a.name, sorted(a.labels.items()))
    )
    return alerts[:max_alerts], max(len(alerts) - max_alerts, 0)


def _alert(item: dict) -> Alert:
    labels = {str(k): str(v) for k, v in (item.get("labels") or {}).items()}
    annotations = {str(k): str(v) for k, v in (item.get("annotations") or {}).items()}
    return Alert(
        name=labels.get("alertname", "?"),
        state=str(item.get("state", "")),
        severity=labels.get("severity", ""),
        summary=annotations.get("summary", ""),
        description=annotations.get("description", ""),
        labels={k: v for k, v in sorted(labels.items()) if k not in HIDDEN_LABELS},
        active_at=_moment(item.get("activeAt")),
        value=str(item.get("value", "")),
    )


def _moment(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:  # Prometheus writes RFC 3339 with nanoseconds; Python reads at most microseconds
        head, _, rest = text.partition(".")
        if rest:
            digits = "".join(c for c in rest if c.isdigit())
            text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


async def read_alerts(
    url: str,
    *,
    timeout_s: float,
    max_alerts: int = MAX_ALERTS,
    max_bytes: int = MAX_BYTES,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Alerts:
    """The alerts Prometheus at `url` holds now. Empty `url`: not configured. The whole read (connect,
    answer, body) is bounded by `timeout_s`, the body by `max_bytes`."""
    if not url:
        return Alerts(configured=False)
    endpoint = url.rstrip("/") + "/api/v1/alerts"
    try:
        async with asyncio.timeout(timeout_s):
            body = await _get(endpoint, timeout_s=timeout_s, max_bytes=max_bytes, transport=transport)
        alerts, left_out = parse(json.loads(body), max_alerts=max_alerts)
    except TimeoutError:
        return Alerts(True, error=f"Prometheus at {where(url)} did not answer within {timeout_s:g} s")
    except httpx.HTTPError as failure:
        return Alerts(True, error=f"Prometheus at {where(url)} did not answer: {type(failure).__name__}")
    except (AnswerRefused, ValueError) as failure:  # json.JSONDecodeError is a ValueError
        return Alerts(True, error=f"Prometheus at {where(url)} answered no alerts: {str(failure)[:200]}")
    return Alerts(True, alerts, left_out=left_out)


async def _get(endpoint: str, *, timeout_s: float, max_bytes: int, transport) -> bytes:
    async with (
        httpx.AsyncClient(timeout=timeout_s, transport=transport, follow_redirects=False) as client,
        client.stream("GET", endpoint, headers={"Accept": "application/json"}) as response,
    ):
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise AnswerRefused(f"the answer is over {max_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        if response.status_code != 200:
            # Prometheus answers its errors (400, 422, 503) in the same JSON shape: say what it says
            try:
                parse(json.loads(body))
            except (AnswerRefused, ValueError) as refused:
                raise AnswerRefused(f"HTTP {response.status_code}: {refused}") from None
            raise AnswerRefused(f"HTTP {response.status_code}")
        return body


async def alerts_page(request: Request):
    """The alerts firing and pending in the Prometheus the console is pointed at."""
    from services.console.app import render

    settings = request.app.state.settings
    found = await read_alerts(settings.prometheus_url, timeout_s=settings.prometheus_timeout_s)
    return render(
        request,
        "alerts.html",
        found=found,
        prometheus=where(settings.prometheus_url) if found.configured else "",
    )


routes = [Route("/alerts", alerts_page)]
