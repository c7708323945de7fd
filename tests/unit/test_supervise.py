"""The local stack's supervisor restarts a service that dies, records why, and stops when asked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUPERVISE = ROOT / "infra/local/supervise.py"
SERVICE = "import os, signal, sys, time; print('up', os.getpid(), flush=True); time.sleep(600)"


def read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_for(check, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s}s")


def start(tmp_path: Path, code: str, **env: str) -> tuple[subprocess.Popen, Path]:
    state = tmp_path / "service.state"
    process = subprocess.Popen(
        [sys.executable, str(SUPERVISE), str(state), "--", sys.executable, "-c", code],
        env={**os.environ, "MLOPS_SUPERVISE_BACKOFF_FIRST_S": "0.1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, state


def test_a_killed_service_is_restarted_and_the_reason_recorded(tmp_path):
    supervisor, state = start(tmp_path, SERVICE)
    try:
        first = wait_for(lambda: read_state(state).get("pid"))
        os.kill(first, signal.SIGKILL)
        second = wait_for(
            lambda: (read_state(state).get("pid") or first) != first and read_state(state)["pid"]
        )
        record = read_state(state)
        assert record["restarts"] == 1
        assert record["last_exit"] == "killed by SIGKILL"
        assert second != first and Path(f"/proc/{second}").exists()
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=30)
    assert "killed by SIGKILL after" in supervisor.stdout.read()


def test_stop_passes_sigterm_to_the_service_and_exits(tmp_path):
    supervisor, state = start(tmp_path, SERVICE)
    child = wait_for(lambda: read_state(state).get("pid"))
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    record = read_state(state)
    assert record["pid"] is None and record["restarts"] == 0
    assert record["last_exit"] == "stopped (killed by SIGTERM)"


def test_a_crash_loop_backs_off_doubling_and_keeps_counting(tmp_path):
    supervisor, state = start(tmp_path, "import sys; sys.exit(3)", MLOPS_SUPERVISE_BACKOFF_CAP_S="0.4")
    try:
        wait_for(lambda: read_state(state).get("restarts", 0) >= 4)
        assert read_state(state)["last_exit"] == "exit code 3"
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=30)
    waits = [line.rsplit(" in ", 1)[1] for line in supervisor.stdout.read().splitlines() if "restart" in line]
    assert waits[:4] == ["0.1 s", "0.2 s", "0.4 s", "0.4 s"], waits
