"""infra/local/services.sh's readiness of an HTTP API (inference's REST on 8000): its check, run as the
script runs it, against a real HTTPS server with the local stack's certificates; ready only on 200 from
/v2/health/ready over TLS verified against the stack's CA. And what it starts keeps no descriptor of its
caller's: a lock held around `services.sh restart` is released when the script ends."""

from __future__ import annotations

import http.server
import re
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_deploy_tools import HTTP_PORTS, REPO

sys.path.insert(0, str(REPO / "infra/local"))
import pki

SERVICES_SH = REPO / "infra/local/services.sh"


def http_ready_check() -> str:
    """The Python that `http_ready` runs (its heredoc)."""
    found = re.search(r"^http_ready\(\) \{.*?<<'PY'[^\n]*\n(.*?)\nPY\n", SERVICES_SH.read_text(), re.M | re.S)
    assert found, "services.sh has no http_ready check"
    return found[1]


class Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/v2/health/ready" else 404
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def stack_pki(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    pki.ensure(root)
    return root


@pytest.fixture
def server(stack_pki: Path) -> Iterator[http.server.ThreadingHTTPServer]:
    """An HTTPS server on a free port with inference's certificate, as the REST server has it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(stack_pki / "grpc/inference.pem", stack_pki / "grpc/inference.key")
    handler = type("Handler", (Health,), {"status": 200})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def check(port: int, ca: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-c", http_ready_check(), str(port), str(ca)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode


def test_ready_when_rest_health_answers_200_over_verified_tls(server, stack_pki: Path) -> None:
    port = server.server_address[1]
    assert check(port, stack_pki / "ca.pem") == 0
    server.RequestHandlerClass.status = 503
    assert check(port, stack_pki / "ca.pem") == 1, "a server that is not ready is not ready"


def test_not_ready_against_another_ca_or_without_a_server(server, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.ensure(other)
    assert check(server.server_address[1], other / "ca.pem") == 1, "the server's certificate is verified"
    server.server_close()
    assert check(server.server_address[1], other / "ca.pem") == 1


def test_only_services_with_an_http_port_wait_for_it() -> None:
    text = SERVICES_SH.read_text()
    # `up` and `status` both ask `ready`, which asks gRPC health and then the HTTP API
    assert 'else healthy "$2" && http_ready "$1"; fi; }' in text
    assert 'until ready "$name" "$port"; do' in text
    assert 'if alive "$name" && ready "$name" "$port"; then' in text
    # the check runs on the port `http_port_of` gives, and passes for a service that has none
    assert '[ -n "$port" ] || return 0' in text
    assert set(HTTP_PORTS) == {"inference"}


def closing_loop() -> str:
    """The loop with which `up` closes the caller's descriptors before it starts a supervisor."""
    found = re.search(
        r"^( +for fd in /proc/\$BASHPID/fd/\*; do\n.*?\n +done\n)", SERVICES_SH.read_text(), re.M | re.S
    )
    assert found, "services.sh no longer closes the caller's descriptors before starting a service"
    return found[1]


@pytest.mark.parametrize("closes", [True, False], ids=["services.sh", "without-the-loop"])
def test_a_lock_held_around_the_script_is_not_held_by_what_it_starts(closes: bool, tmp_path: Path) -> None:
    lock = tmp_path / "stack.lock"
    script = tmp_path / "start.sh"
    started = tmp_path / "started.pid"
    loop = closing_loop() if closes else ""
    script.write_text(
        f"set -Eeuo pipefail\n(\n{loop}  setsid nohup sleep 30 >/dev/null 2>&1 </dev/null &\n"
        f"  echo $! >{started}\n)\n"
    )
    flock = shutil.which("flock")
    assert flock, "flock (util-linux) is needed, as the stack's procedure uses it"
    subprocess.run([flock, str(lock), "bash", str(script)], check=True, timeout=30)
    free = subprocess.run([flock, "-n", str(lock), "true"], timeout=30).returncode == 0
    subprocess.run(["kill", started.read_text().strip()], check=False)
    assert free == closes, "the lock outlives the script only when the descriptors are not closed"
