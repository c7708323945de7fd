"""What the console's integration and browser tests share: where the console is, the people's
tokens the local stack made, and the demo's data read through the services as a viewer."""

from __future__ import annotations

import datetime
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from mlops.deployer.v1 import deployer_pb2, deployer_pb2_grpc
from mlops.jaeger import SQL_VERBS, TRACE_TAG
from mlops.registry.v1 import registry_pb2, registry_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("MLOPS_STACK_DIR", REPO / ".stack"))
CLIENTS = STACK / "clients"
CONSOLE = os.environ.get("MLOPS_CONSOLE_URL", "http://127.0.0.1:8080")
JAEGER = os.environ.get("MLOPS_JAEGER_QUERY_URL", "http://127.0.0.1:16686")
DEMO_MODEL = os.environ.get("MLOPS_CONSOLE_TEST_MODEL", "wine-quality")


def token(person: str) -> str:
    return (CLIENTS / f"{person}.token").read_text().strip()


@contextmanager
def signed_in(person: str) -> Iterator[httpx.Client]:
    """An HTTP client holding the console's session cookie for that person's token."""
    with httpx.Client(base_url=CONSOLE, timeout=60.0, follow_redirects=True) as client:
        response = client.get("/login", params={"token": token(person)}, follow_redirects=False)
        assert response.status_code == 303, (
            f"{person} could not sign in: {response.status_code} {response.text[:300]}"
        )
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie, cookie
        yield client


@dataclass
class Demo:
    """The demo model's data as the services hold it: a traced version, its runs and rollouts."""

    model: str
    version: int
    trace_id: str
    """The trace the newest version was made in (its page links to it)."""
    shown_trace_id: str
    """A trace Jaeger still holds (its memory storage forgets on restart): the newest version's
    where it can, else the newest of any platform service in the last hours."""
    run_ids: list[str]
    rollout_id: str
    rollout_state: int


def _read_demo() -> Demo | None:
    """The demo's data as the services hold it, or None when the demo has not run on this stack."""
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials((CLIENTS / "ca.pem").read_bytes()),
        grpc.access_token_call_credentials(token("viewer")),
    )
    port = int(os.environ.get("MLOPS_REGISTRY_GRPC_PORT", "50051"))
    deployer_port = int(os.environ.get("MLOPS_DEPLOYER_GRPC_PORT", "50052"))
    with grpc.secure_channel(f"127.0.0.1:{port + 10}", credentials) as channel:
        registry = registry_pb2_grpc.RegistryStub(channel)
        versions = registry.ListModelVersions(
            registry_pb2.ListModelVersionsRequest(model=DEMO_MODEL, page_size=100), timeout=10
        ).model_versions
        recent = registry.SearchModelVersions(
            registry_pb2.SearchModelVersionsRequest(page_size=60), timeout=10
        ).model_versions
        runs = registry.ListRuns(
            registry_pb2.ListRunsRequest(model=DEMO_MODEL, page_size=10), timeout=10
        ).runs
    traced = [v for v in versions if v.tags.get(TRACE_TAG)]
    if not traced or not runs:
        return None
    with grpc.secure_channel(f"127.0.0.1:{deployer_port + 10}", credentials) as channel:
        rollouts = (
            deployer_pb2_grpc.DeployerStub(channel)
            .ListRollouts(deployer_pb2.ListRolloutsRequest(model=DEMO_MODEL, page_size=5), timeout=10)
            .rollouts
        )
    if not rollouts:
        return None
    newest = max(traced, key=lambda v: v.version)
    shown = _trace_in_jaeger(
        [v.tags[TRACE_TAG] for v in sorted(traced, key=lambda v: -v.version)]
        + [v.tags[TRACE_TAG] for v in recent if v.tags.get(TRACE_TAG)]
    )
    rollout = max(rollouts, key=lambda r: r.started_at.seconds)
    return Demo(
        model=DEMO_MODEL,
        version=newest.version,
        trace_id=newest.tags[TRACE_TAG],
        shown_trace_id=shown,
        run_ids=[r.run_id for r in runs[:2]],
        rollout_id=rollout.rollout_id,
        rollout_state=rollout.state,
    )


def demo() -> Demo:
    """The demo's data; on a stack where the demo has not run (a fresh one, as in CI), the demo runs
    first, as `make demo` runs it (once: a lock keeps two test sessions from running it together)."""
    with (STACK / "demo.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _read_demo()
        if found is None and DEMO_MODEL == "wine-quality":
            env = {k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"}
            ran = subprocess.run(
                [sys.executable, "-m", "mlops.demo"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert ran.returncode == 0, (
                f"the demo failed ({ran.returncode}): {ran.stdout[-3000:]}{ran.stderr[-3000:]}"
            )
            found = _read_demo()
    assert found is not None, f"no traced version, run or rollout of {DEMO_MODEL} on this stack"
    return found


def _non_sql_spans(otlp: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for resource in otlp["result"]["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                sql = span["name"].split(" ")[0].rstrip(";") in SQL_VERBS
                counts[span["traceId"]] = counts.get(span["traceId"], 0) + (0 if sql else 1)
    return counts


def _trace_in_jaeger(wanted: list[str]) -> str:
    """The first of `wanted` that Jaeger holds with more than SQL statements in it; else (Jaeger keeps
    traces in memory and forgets them when restarted) the recent trace of the platform with most."""
    with httpx.Client(base_url=JAEGER, timeout=10.0) as jaeger:
        for trace_id in wanted[:60]:
            reply = jaeger.get(f"/api/v3/traces/{trace_id}")
            if reply.status_code == 200 and _non_sql_spans(reply.json()).get(trace_id, 0) > 3:
                return trace_id
        now = datetime.datetime.now(datetime.UTC)
        best: dict[str, int] = {}
        for service in ("mlops-deployer", "mlops-evaluator", "mlops-trainer", "mlops-registry"):
            reply = jaeger.get(
                "/api/v3/traces",
                params={
                    "query.service_name": service,
                    "query.start_time_min": (now - datetime.timedelta(hours=6))
                    .isoformat()
                    .replace("+00:00", "Z"),
                    "query.start_time_max": now.isoformat().replace("+00:00", "Z"),
                    "query.num_traces": 200,
                },
            )
            if reply.status_code == 200:
                best |= _non_sql_spans(reply.json())
    assert best and max(best.values()) >= 2, (
        f"Jaeger at {JAEGER} holds no trace: run `make demo` on the stack"
    )
    return max(best, key=lambda trace_id: best[trace_id])


def pages(d: Demo) -> dict[str, list[str]]:
    """Every page of the console with what it must show for the demo model."""
    compare = "&".join(f"compare={run}" for run in d.run_ids)
    return {
        f"/?q={d.model}": [d.model, "production"],
        f"/models/{d.model}": [f"v{d.version}", "Versions", "Rollouts"],
        f"/models/{d.model}/versions/{d.version}": [
            "Gate results",
            "Signature",
            '<svg class="lineage"',
            "Alias ledger",
            f"/traces/{d.trace_id}",
        ],
        f"/runs?model={d.model}&{compare}": ["Compared", "<polyline", d.run_ids[0][:8]],
        f"/runs/{d.run_ids[0]}": ["Params", "Per-epoch curves", "<polyline"],
        f"/rollouts?model={d.model}": [d.rollout_id[:8]],
        f"/rollouts/{d.model}/{d.rollout_id}": ["Timeline", "Promote", "Rollback", "Pause", "Resume"],
        f"/drift/{d.model}": ["Per feature per window", '<svg class="heatmap"', "Live accuracy"],
        f"/traces?model={d.model}": [d.trace_id],
        f"/traces/{d.shown_trace_id}": ["Tree", "Timeline", '<svg class="timeline"'],
        "/live": ["Live events"],
        "/dead-letters": ["Dead letters"],
    }
