"""The console's read of Prometheus's alerts (services/console/alerts.py), against a real HTTP server
in this process that answers `/api/v1/alerts` with an answer recorded from Prometheus 3.7.3 evaluating
infra/prometheus/alerts.yml (prometheus_alerts_recorded.json: a scrape target down), a sample with
several alerts in the same format (prometheus_alerts.json), or slowly, or too much, or an error."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.console.alerts import Alerts, parse, read_alerts

DATA = Path(__file__).parent / "data"
SAMPLE = (DATA / "prometheus_alerts.json").read_bytes()
RECORDED = (DATA / "prometheus_alerts_recorded.json").read_bytes()
SLOW_S = 3.0


class Prometheus(BaseHTTPRequestHandler):
    """`/<behaviour>/api/v1/alerts`: ok, slow, big, error, garbage."""

    def do_GET(self) -> None:
        behaviour, _, rest = self.path.lstrip("/").partition("/")
        if rest != "api/v1/alerts":
            return self._answer(404, b'{"status":"error","errorType":"not_found","error":"no such path"}')
        if behaviour == "ok":
            return self._answer(200, SAMPLE)
        if behaviour == "recorded":
            return self._answer(200, RECORDED)
        if behaviour == "slow":
            time.sleep(SLOW_S)  # an answer later than the console waits
            return self._answer(200, SAMPLE)
        if behaviour == "big":
            return self._answer(200, b'{"status":"success","data":{"alerts":[' + b" " * 300_000 + b"]}}")
        if behaviour == "error":
            return self._answer(
                503, b'{"status":"error","errorType":"unavailable","error":"rule manager not ready"}'
            )
        return self._answer(200, b"<html>not prometheus</html>")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Prometheus)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_firing_alerts_come_first_with_who_and_since(prometheus: str) -> None:
    found = await read_alerts(f"{prometheus}/ok", timeout_s=2)
    assert found.configured and not found.error, found.error
    assert [(a.name, a.state) for a in found.alerts] == [
        ("MlopsServiceDown", "firing"),
        ("MlopsDeadLetters", "firing"),
        ("MlopsRolloutPaused", "pending"),
    ]
    down = found.alerts[0]
    assert down.severity == "critical" and down.summary == "registry is down"
    assert down.labels == {"instance": "127.0.0.1:9101", "job": "mlops", "service": "registry"}
    assert down.active_at is not None and down.active_at.isoformat() == "2026-12-07T18:59:30.500000+00:00"
    assert found.alerts[2].active_at.microsecond == 123456, "nanoseconds are cut to microseconds"
    assert [a.name for a in found.firing] == ["MlopsServiceDown", "MlopsDeadLetters"]
    assert [a.name for a in found.pending] == ["MlopsRolloutPaused"]


async def test_a_recorded_answer_of_prometheus_is_read(prometheus: str) -> None:
    found = await read_alerts(f"{prometheus}/recorded", timeout_s=2)
    assert not found.error, found.error
    (down,) = found.alerts
    assert (down.name, down.state, down.severity, down.summary) == (
        "MlopsServiceDown",
        "firing",
        "critical",
        "registry is down",
    )
    assert down.labels["service"] == "registry" and down.active_at is not None


async def test_no_url_means_not_configured() -> None:
    assert await read_alerts("", timeout_s=1) == Alerts(configured=False)


async def test_a_slow_prometheus_is_given_up_on_in_time(prometheus: str) -> None:
    started = time.monotonic()
    found = await read_alerts(f"{prometheus}/slow", timeout_s=0.5)
    assert time.monotonic() - started < SLOW_S - 1
    assert found.configured and not found.alerts
    assert "did not answer" in found.error


async def test_an_answer_over_the_bound_is_refused(prometheus: str) -> None:
    found = await read_alerts(f"{prometheus}/big", timeout_s=2, max_bytes=100_000)
    assert "over 100000 bytes" in found.error and not found.alerts


async def test_prometheus_errors_and_other_servers_are_said(prometheus: str) -> None:
    error = await read_alerts(f"{prometheus}/error", timeout_s=2)
    assert "HTTP 503" in error.error and "rule manager not ready" in error.error
    garbage = await read_alerts(f"{prometheus}/garbage", timeout_s=2)
    assert "answered no alerts" in garbage.error


async def test_a_prometheus_away_is_said_without_the_urls_credentials() -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    found = await read_alerts(f"http://ops:s3cret@127.0.0.1:{port}/?token=t0k", timeout_s=2)
    assert found.error.startswith(f"Prometheus at http://127.0.0.1:{port} did not answer: Connect")
    assert "s3cret" not in found.error and "t0k" not in found.error


def test_alerts_past_the_bound_are_counted() -> None:
    answer = json.loads(SAMPLE)
    alerts, left_out = parse(answer, max_alerts=2)
    assert [a.name for a in alerts] == ["MlopsServiceDown", "MlopsDeadLetters"] and left_out == 1
    with pytest.raises(ValueError, match=r"no data\.alerts"):
        parse({"status": "success", "data": {}})


def _signed_in(prometheus_url: str):
    from starlette.testclient import TestClient

    from services.console.app import build_app
    from services.console.settings import ConsoleSettings
    from tests.unit.test_console import VIEWER, FakePlatform

    client = TestClient(build_app(ConsoleSettings(prometheus_url=prometheus_url), FakePlatform().as_person))
    assert client.get(f"/login?token={VIEWER}", follow_redirects=False).status_code == 303
    return client


def test_the_alerts_page_shows_what_fires_and_links_the_model(prometheus: str) -> None:
    page = _signed_in(f"{prometheus}/ok").get("/alerts")
    assert page.status_code == 200, page.text
    assert "2 firing, 1 pending" in page.text
    assert page.text.index("MlopsServiceDown") < page.text.index("MlopsRolloutPaused")
    assert "registry is down" in page.text and '<a href="/models/wine">model=wine</a>' in page.text
    assert 'href="/alerts"' in page.text, "the nav links the page"


def test_the_alerts_page_says_when_no_prometheus_is_configured_or_it_is_away(prometheus: str) -> None:
    assert "no Prometheus is configured" in _signed_in("").get("/alerts").text
    page = _signed_in(f"{prometheus}/error").get("/alerts")
    assert page.status_code == 200 and "rule manager not ready" in page.text
