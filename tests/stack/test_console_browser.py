"""The console in a real headless browser: Debian's Chromium (`apt-get install -y chromium`) driven
by Playwright (`pip install playwright`, no browser download: it is pointed at that executable).
Every page opens with the demo's data; a viewer's action is refused, an operator's reaches the
deployer; screenshots of the main pages go to build/console/ (`make screenshots` writes them to
docs/console/ instead, the pictures the README shows)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.integration.console_helpers import CONSOLE, REPO, Demo, demo, pages, token

# The first test may wait for the demo to run on a fresh stack (about two minutes, more under load).
pytestmark = pytest.mark.timeout(900)

CHROMIUM = os.environ.get("MLOPS_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
SHOTS = Path(os.environ.get("MLOPS_CONSOLE_SCREENSHOTS", REPO / "build" / "console"))
SHOT_NAMES = {
    "models": lambda d: f"/?q={d.model}",
    "version": lambda d: f"/models/{d.model}/versions/{d.version}",
    "runs": lambda d: f"/runs?model={d.model}&" + "&".join(f"compare={r}" for r in d.run_ids),
    "rollout": lambda d: f"/rollouts/{d.model}/{d.rollout_id}",
    "drift": lambda d: f"/drift/{d.model}",
    "trace": lambda d: f"/traces/{d.shown_trace_id}",
    "dead-letters": lambda d: "/dead-letters",
    "live": lambda d: "/live",
}


@pytest.fixture(scope="module")
def data() -> Demo:
    return demo()


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: apt-get install -y chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def _signed_in(browser: Browser, person: str) -> Page:
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(f"{CONSOLE}/login?token={token(person)}")
    assert page.url.rstrip("/") == CONSOLE, page.url
    assert page.locator("#role").inner_text() == person
    return page


def test_every_page_opens_in_the_browser_with_the_demos_data(browser: Browser, data: Demo) -> None:
    page = _signed_in(browser, "viewer")
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    for path, expected in pages(data).items():
        response = page.goto(f"{CONSOLE}{path}")
        assert response is not None and response.status == 200, path
        html = page.content()
        for text in expected:
            assert text.replace("&", "&amp;") in html or text in html, (path, text)
    assert not errors, errors


def test_screenshots_of_the_main_pages(browser: Browser, data: Demo) -> None:
    page = _signed_in(browser, "operator")
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name, path in SHOT_NAMES.items():
        page.goto(f"{CONSOLE}{path(data)}")
        target = SHOTS / f"{name}.png"
        page.screenshot(path=str(target))  # the first screenful: what a person sees on opening it
        assert target.stat().st_size > 10_000, name


def test_a_viewer_clicking_pause_sees_the_refusal(browser: Browser, data: Demo) -> None:
    page = _signed_in(browser, "viewer")
    page.goto(f"{CONSOLE}/rollouts/{data.model}/{data.rollout_id}")
    page.get_by_role("button", name="Pause").click()
    page.wait_for_load_state()
    alert = page.get_by_role("alert")
    assert "Pause refused" in alert.inner_text() and "needs operator" in alert.inner_text()


def test_an_operator_clicking_resume_reaches_the_deployer(browser: Browser, data: Demo) -> None:
    page = _signed_in(browser, "operator")
    page.goto(f"{CONSOLE}/rollouts/{data.model}/{data.rollout_id}")
    page.get_by_role("button", name="Resume").click()
    page.wait_for_load_state()
    shown = page.locator("main").inner_text()
    assert "needs operator" not in shown
    assert "Resume done" in shown or "Resume refused" in shown, shown[:500]


def test_a_trace_link_on_a_version_page_opens_the_trace(browser: Browser, data: Demo) -> None:
    page = _signed_in(browser, "viewer")
    page.goto(f"{CONSOLE}/models/{data.model}/versions/{data.version}")
    page.locator("#trace-link").click()
    page.wait_for_load_state()
    assert page.url.endswith(f"/traces/{data.trace_id}")
    assert "Trace" in page.locator("h1").inner_text()
