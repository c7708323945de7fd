"""Keeps one service of the local stack running, the way Kubernetes keeps a pod's container running.

Usage: supervise.py STATE_FILE -- COMMAND [ARG ...]

Starts COMMAND and, whenever it exits without being asked to, starts it again after a back-off that
doubles from 1 s up to a cap (like a CrashLoopBackOff) and resets once a run has lasted long enough to
count as healthy. SIGTERM or SIGINT stops it: the signal is passed to the service, which gets a
deadline to finish its in-flight work before SIGKILL, and then the supervisor exits.

STATE_FILE (JSON, rewritten atomically on every change) tells `services.sh status` the service's own
pid, how often it was restarted and why it last exited. Only the standard library is used, so any
Python 3 runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BACKOFF_FIRST_S = float(os.environ.get("MLOPS_SUPERVISE_BACKOFF_FIRST_S", "1"))
BACKOFF_CAP_S = float(os.environ.get("MLOPS_SUPERVISE_BACKOFF_CAP_S", "60"))
# A run this long counts as healthy: the next crash starts the back-off from the beginning again.
STABLE_AFTER_S = float(os.environ.get("MLOPS_SUPERVISE_STABLE_AFTER_S", "60"))
STOP_TIMEOUT_S = float(os.environ.get("MLOPS_SERVICES_STOP_TIMEOUT", "20"))


def exit_reason(returncode: int) -> str:
    """A person's words for how a process ended: "exit code 1", "killed by SIGKILL"."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class Supervisor:
    def __init__(self, state_file: Path, command: list[str]) -> None:
        self.state_file = state_file
        self.command = command
        self.child: subprocess.Popen | None = None
        self.stopping = False
        self.state = {"pid": None, "restarts": 0, "last_exit": None, "last_exit_at": None, "started_at": None}

    def write_state(self) -> None:
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.state))
        temporary.replace(self.state_file)

    def on_stop(self, signum: int, _frame) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def say(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print(f"=== {stamp} supervise: {message}", flush=True)

    def sleep_unless_stopped(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_stop)
        signal.signal(signal.SIGINT, self.on_stop)
        backoff = BACKOFF_FIRST_S
        while not self.stopping:
            started = time.monotonic()
            self.child = subprocess.Popen(self.command)
            if self.stopping:  # a stop that came while the child was being started
                self.child.terminate()
            self.state.update(pid=self.child.pid, started_at=time.time())
            self.write_state()
            returncode = self.child.wait()
            if self.stopping:
                break
            ran_s = time.monotonic() - started
            if ran_s >= STABLE_AFTER_S:
                backoff = BACKOFF_FIRST_S
            reason = exit_reason(returncode)
            self.state.update(pid=None, last_exit=reason, last_exit_at=time.time())
            self.state["restarts"] += 1
            self.write_state()
            self.say(f"{reason} after {ran_s:.1f} s; restart {self.state['restarts']} in {backoff:g} s")
            self.sleep_unless_stopped(backoff)
            backoff = min(backoff * 2, BACKOFF_CAP_S)
        return self.stop_child()

    def stop_child(self) -> int:
        child = self.child
        if child is None:
            return 0
        try:
            returncode = child.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.say(f"no exit {STOP_TIMEOUT_S:g} s after SIGTERM: SIGKILL")
            child.kill()
            returncode = child.wait()
        self.state.update(
            pid=None, last_exit=f"stopped ({exit_reason(returncode)})", last_exit_at=time.time()
        )
        self.write_state()
        return 0


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    # A supervisor outlives whoever started it: it keeps none of the descriptors it inherited beyond
    # stdin, stdout and stderr (a lock its starter held, a pipe someone waits to see closed).
    os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)
    return Supervisor(Path(argv[0]), argv[2:]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
