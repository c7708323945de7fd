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


SECTION = "services' warnings and errors during the test"
SAID = "services_said"
IN_SUMMARY = 8  # lines per service repeated at the very end of the run, where a log's tail shows them
LINE_CHARS = 240


def report_on_failure(item, report, logs: Path) -> None:
    if report.when != "call" or not report.failed or _STARTED not in item.stash:
        return
    said = said_since(logs, item.stash[_STARTED])
    text = "\n".join(f"--- {service}\n" + "\n".join(lines) for service, lines in said.items())
    report.sections.append((SECTION, text or "(none)"))
    report.user_properties.append((SAID, said))


def last_words(said: dict[str, list[str]]) -> list[str]:
    """The last IN_SUMMARY lines of each service, each cut to LINE_CHARS."""
    lines: list[str] = []
    for service, said_lines in said.items():
        lines.append(f"{service}:")
        lines += [f"  {line[:LINE_CHARS]}" for line in said_lines[-IN_SUMMARY:]]
    return lines


def summarise_failures(terminalreporter) -> None:
    """The last lines each service said during every failed fault test, after pytest's own summary."""
    for report in terminalreporter.stats.get("failed", []):
        said = dict(getattr(report, "user_properties", [])).get(SAID)
        if said is None:
            continue
        terminalreporter.write_sep("-", f"{report.nodeid}: what the services said last")
        terminalreporter.write_line("\n".join(last_words(said)) or "(nothing logged at WARNING or above)")
