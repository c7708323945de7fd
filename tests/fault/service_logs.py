"""What the services said while a fault test ran, printed when it fails: CI keeps no `.stack/logs`, so a
failed scenario's report must carry the warnings and errors that explain it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

SERVICES = ("registry", "trainer", "evaluator", "deployer", "monitor", "inference")
NOISE = ("opentelemetry.exporter",)  # Jaeger down is itself a fault the tests inject
PER_SERVICE = 40


def said_since(logs: Path, since: float) -> dict[str, list[str]]:
    """Each service's WARNING and ERROR lines stamped at or after `since` (epoch seconds), the last
    PER_SERVICE of them; lines without a stamp (tracebacks) follow the line they belong to."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    found: dict[str, list[str]] = {}
    for service in SERVICES:
        path = logs / f"{service}.log"
        if not path.exists():
            continue
        kept: list[str] = []
        keeping = False
        with path.open(errors="replace") as handle:
            for line in handle:
                if line[:4].isdigit() and line[4:5] == "-":
                    keeping = line[:19] >= stamp and (" WARNING " in line or " ERROR " in line)
                    keeping = keeping and not any(noise in line for noise in NOISE)
                if keeping:
                    kept.append(line.rstrip())
        if kept:
            found[service] = kept[-PER_SERVICE:]
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    item.stash[_STARTED] = time.time()
    return (yield)


_STARTED = pytest.StashKey[float]()


def report_on_failure(item, report, logs: Path) -> None:
    if report.when != "call" or not report.failed or _STARTED not in item.stash:
        return
    said = said_since(logs, item.stash[_STARTED])
    text = "\n".join(f"--- {service}\n" + "\n".join(lines) for service, lines in said.items())
    report.sections.append(("services' warnings and errors during the test", text or "(none)"))
