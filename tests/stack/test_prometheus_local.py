"""The local stack's Prometheus (infra/local/components/prometheus.sh) on the running stack: ready,
holding every alerting rule of infra/prometheus/alerts.yml, scraping every service that
infra/prometheus/local.yml names, and read by the console, whose /alerts page shows the alerts
Prometheus holds, each in its state (signed in as `make up` signs people in: clients/console-token).

Needs the stack and the services up (`make up`); runs under `flock -o /tmp/stack.lock`."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("MLOPS_STACK_DIR", ROOT / ".stack"))
PROMETHEUS = f"http://127.0.0.1:{os.environ.get('MLOPS_PROMETHEUS_PORT', '9090')}"
CONSOLE = os.environ.get("MLOPS_CONSOLE_URL", "http://127.0.0.1:8080")
RULES = yaml.safe_load((ROOT / "infra/prometheus/alerts.yml").read_text())
SCRAPE = yaml.safe_load((ROOT / "infra/prometheus/local.yml").read_text())
DEADLINE_S = 90.0
"""Scrapes and rule evaluations run every 2 s (local.yml): a minute and a half is many rounds."""


def eventually(check, *, what: str, timeout_s: float = DEADLINE_S):
    """`check()`'s first true answer; fails with its last answer when none came in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        result, last = check()
        if result:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not so within {timeout_s:g} s; last seen: {last}")
        time.sleep(0.5)  # the pause between polls, not a wait standing in for the condition


def api(path: str) -> dict:
    response = httpx.get(f"{PROMETHEUS}{path}", timeout=5)
    response.raise_for_status()
    answer = response.json()
    assert answer["status"] == "success", answer
    return answer["data"]


def active_alerts() -> collections.Counter:
    return collections.Counter(
        (a["labels"]["alertname"], a["state"]) for a in api("/api/v1/alerts")["alerts"]
    )


@pytest.fixture(scope="module")
def console() -> httpx.Client:
    token = (STACK / "clients" / "console-token").read_text().strip()
    with httpx.Client(base_url=CONSOLE, timeout=30) as client:
        signed = client.get("/login", params={"token": token})
        assert signed.status_code == 303, f"the console refused its token: {signed.status_code}"
        yield client


def test_prometheus_is_a_ready_component_of_the_stack() -> None:
    status = subprocess.run(
        ["bash", str(ROOT / "infra/local/stack.sh"), "status", "prometheus"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.match(r"prometheus\s+ready\s+pid \d+\s+http://127\.0\.0\.1:\d+", status.stdout), status.stdout
    assert httpx.get(f"{PROMETHEUS}/-/ready", timeout=5).status_code == 200


def test_every_rule_of_alerts_yml_is_loaded_and_evaluates() -> None:
    wanted = {g["name"]: {r["alert"] for r in g["rules"]} for g in RULES["groups"]}
    assert sum(map(len, wanted.values())) >= 10, wanted

    def loaded():
        groups = api("/api/v1/rules?type=alert")["groups"]
        names = {g["name"]: {r["name"] for r in g["rules"]} for g in groups}
        unhealthy = {r["name"]: r.get("lastError") for g in groups for r in g["rules"] if r["health"] != "ok"}
        return names == wanted and not unhealthy, {"groups": names, "not ok": unhealthy}

    eventually(loaded, what="every rule of alerts.yml loaded, each evaluated without error")


def test_every_service_of_local_yml_is_scraped() -> None:
    wanted = {
        t["labels"]["service"]: target
        for job in SCRAPE["scrape_configs"]
        for t in job["static_configs"]
        for target in t["targets"]
    }
    assert {"registry", "deployer", "monitor", "inference"} <= set(wanted), wanted

    def all_up():
        targets = api("/api/v1/targets?state=active")["activeTargets"]
        seen = {
            t["labels"].get("service"): (t["labels"]["instance"], t["health"], t["lastError"])
            for t in targets
        }
        return all(seen.get(s, ("", ""))[:2] == (i, "up") for s, i in wanted.items()), seen

    eventually(all_up, what="every service's target up")


def test_the_consoles_alerts_page_shows_what_prometheus_holds(console: httpx.Client) -> None:
    def same_as_prometheus():
        before = active_alerts()
        page = console.get("/alerts")
        after = active_alerts()
        assert page.status_code == 200, page.text[:500]
        html = page.text
        assert "no Prometheus is configured" not in html, "the console has no MLOPS_CONSOLE_PROMETHEUS_URL"
        assert 'class="refused"' not in html, re.findall(r'<p class="refused">([^<]*)', html)
        shown = collections.Counter(
            (name, state)
            for state, name in re.findall(r'<tr class="alert (\w+)">.*?<code>([^<]+)</code>', html, re.S)
        )
        firing, pending = (sum(n for (_, s), n in shown.items() if s == k) for k in ("firing", "pending"))
        said = f"From {PROMETHEUS}: {firing} firing, {pending} pending."
        empty = "no alert is firing or pending" in html
        agrees = shown == before and said in html and empty == (not before)
        return before == after and agrees, {
            "prometheus": dict(before),
            "page": dict(shown),
            "summary line": said in html,
        }

    eventually(same_as_prometheus, what="the page lists Prometheus's alerts in their states")
