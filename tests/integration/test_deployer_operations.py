"""The deployer steered and surviving, against the real stack (see `deployer_helpers`): pause,
resume, promote and rollback through gRPC and the CLI, health timeouts, restarts that keep the
step clock, clear statuses for bad requests, and the migrated schema.
"""

# The harness fixture is imported from deployer_helpers, and pytest hands it to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from datetime import UTC

import grpc
import pytest

from mlops.db import migrate
from mlops.deployer.v1 import deployer_pb2 as dpb
from mlops.registry.v1 import registry_pb2 as pb
from services.deployer.__main__ import MIGRATIONS
from services.deployer.tables import SCHEMA
from tests.integration.conftest import eventually
from tests.integration.deployer_helpers import (
    ROOT,
    STEP_SECONDS,
    S,
    claimed,
    finished,
    harness,  # noqa: F401 - the deployer in-process, as a fixture
    new_model,
    published,
    rollout_of,
    shares,
)


async def test_pause_resume_promote_and_rollback_through_grpc(harness, unique):
    h = harness
    model, (_v1, v2, v3) = await new_model(h, unique, versions=3, production=1)
    await h.publisher.publish(await claimed(h, v2))
    await eventually(lambda: rollout_of(h, model), what="v2's rollout")
    # the actor a caller types is not believed: the ledger names the authenticated caller (the operator)
    act = dpb.RolloutActionRequest(model=model, actor="alice", reason="checking dashboards")

    paused = await h.deployer.Pause(act)
    assert paused.state == S.ROLLOUT_STATE_PAUSED and paused.reason.startswith(
        "paused by user:admin: checking dashboards"
    )
    await asyncio.sleep(3 * STEP_SECONDS)
    still = await rollout_of(h, model)
    assert (still.state, still.step_index) == (S.ROLLOUT_STATE_PAUSED, paused.step_index), (
        "paused: no step taken"
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await h.deployer.Pause(act)
    assert (
        raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        and "already paused" in raised.value.details()
    )

    resumed = await h.deployer.Resume(act)
    assert resumed.state == S.ROLLOUT_STATE_PROGRESSING and resumed.history[-1].actor == "user:admin"
    promoted = await h.deployer.Promote(
        dpb.RolloutActionRequest(model=model, actor="alice", reason="looks good")
    )
    assert promoted.state == S.ROLLOUT_STATE_PROMOTED and promoted.reason.startswith(
        "promoted by user:admin: looks good"
    )
    deployed = await published(h, S.ModelDeployed, model, until=lambda f: len(f) >= 1)
    assert (deployed[-1].version, deployed[-1].actor) == (2, "user:admin")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await h.deployer.Resume(act)
    assert (
        raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        and "no running rollout" in raised.value.details()
    )

    # v3 rolls out; an operator withdraws it
    await h.publisher.publish(await claimed(h, v3))

    async def v3_running():
        rollout = await rollout_of(h, model)
        return rollout if rollout.candidate_version == 3 else None

    await eventually(v3_running, what="v3's rollout")
    withdrawn = await h.deployer.Rollback(
        dpb.RolloutActionRequest(model=model, actor="bob", reason="customer complaints")
    )
    assert withdrawn.state == S.ROLLOUT_STATE_ROLLED_BACK and withdrawn.baseline_version == 2
    rolled = await published(h, S.ModelRolledBack, model, until=lambda f: len(f) >= 1)
    assert (rolled[-1].from_version, rolled[-1].to_version, rolled[-1].automatic, rolled[-1].actor) == (
        3,
        2,
        False,
        "user:admin",
    )

    # with nothing running, a rollback returns production to the version before: v2 → v1
    back = await h.deployer.Rollback(
        dpb.RolloutActionRequest(model=model, actor="bob", reason="v2 misbehaves")
    )
    assert (back.candidate_version, back.baseline_version, back.state) == (2, 1, S.ROLLOUT_STATE_ROLLED_BACK)
    production = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert production.version == 1
    desired = await h.deployer.GetDesiredState(dpb.GetDesiredStateRequest(model=model))
    assert shares(desired) == [(1, "PRODUCTION", 100)]


async def test_a_paused_rollout_is_still_watched_and_rolled_back(harness, unique):
    h = harness
    model, (_v1, v2) = await new_model(h, unique, production=1)
    await h.publisher.publish(await claimed(h, v2))
    await eventually(lambda: rollout_of(h, model), what="v2's rollout")
    await h.deployer.Pause(dpb.RolloutActionRequest(model=model, actor="erin"))
    h.monitor.modes[(model, 2)] = "drifting"
    rollout = await finished(h, model, 2)
    assert rollout.state == S.ROLLOUT_STATE_ROLLED_BACK
    assert rollout.reason.startswith("prediction drift (PSI against the baseline) 0.9 > 0.25 at step")
    assert rollout.prediction_drift == pytest.approx(0.9)
    (event,) = await published(h, S.ModelRolledBack, model, until=lambda f: len(f) >= 1)
    assert event.automatic and event.to_version == 1


async def test_a_restarted_deployer_goes_on_with_the_same_step_clock(harness, unique):
    h = harness
    # The deployer goes away late in an 8 s step: a kept clock moves on at about 8 s, a restarted
    # one at about 4 + 1.5 + 8 = 13.5 s; the bound sits between them with room on both sides.
    step = 8
    model, (_v1, v2) = await new_model(h, unique, steps=(20, 100), step_seconds=step, production=1)
    await h.publisher.publish(await claimed(h, v2))
    first = await eventually(lambda: rollout_of(h, model), what="v2's rollout")
    started = first.step_started_at.ToDatetime(tzinfo=UTC)
    await asyncio.sleep(4)
    await h.stop_watch()  # the deployer goes away mid-step ...
    await asyncio.sleep(1.5)
    h.start_watch(h.make_core())  # ... and a new one takes over from the database

    async def second_step():
        rollout = await rollout_of(h, model)
        return rollout if rollout.step_index == 1 else None

    moved = await eventually(second_step, timeout_s=20, what="the second step")
    assert [m.step_index for m in moved.history] == [0, 1], "the restarted deployer did not restart step 1"
    advanced = moved.history[1].progressed_at.ToDatetime(tzinfo=UTC)
    elapsed = (advanced - started).total_seconds()
    assert step <= elapsed < step + 3.5, f"the step ran {elapsed:.1f}s: its clock restarted with the deployer"
    assert (await finished(h, model)).state == S.ROLLOUT_STATE_PROMOTED


UNREACHABLE = r"monitor unreachable \((UNAVAILABLE|DEADLINE_EXCEEDED)\)"
"""A monitor answering UNAVAILABLE: the channel retries it with back-off, so under the harness's
0.5 s deadline the call ends with either status, and the reason names the one the deployer got."""


@pytest.mark.parametrize(
    ("mode", "cause"),
    [("unavailable", UNREACHABLE), ("few", r"only 3 of 20 requests")],
)
async def test_a_canary_without_a_health_verdict_is_rolled_back_after_its_health_timeout(
    harness, unique, mode, cause
):
    h = harness
    timeout = 2
    model, (_v1, v2) = await new_model(
        h, unique, steps=(50, 100), production=1, health_timeout_seconds=timeout
    )
    h.monitor.modes[(model, 2)] = mode
    await h.publisher.publish(await claimed(h, v2))
    rollout = await finished(h, model, 2)

    words = rollout.reason
    assert rollout.state == S.ROLLOUT_STATE_ROLLED_BACK, rollout
    assert re.fullmatch(
        rf"no health verdict for {timeout} s after step 1 of 2 \(50%\): {cause}; rolled back", words
    ), words
    assert any(m.reason.startswith("holding at step 1 of 2 (50%)") for m in rollout.history), (
        "the hold came first"
    )
    waited = (rollout.finished_at.ToDatetime() - rollout.step_started_at.ToDatetime()).total_seconds()
    assert STEP_SECONDS + timeout <= waited < STEP_SECONDS + timeout + 3, waited
    (event,) = await published(h, S.ModelRolledBack, model, until=lambda f: len(f) >= 1)
    assert (event.from_version, event.to_version, event.automatic, event.reason) == (2, 1, True, words)
    desired = await published(h, S.DesiredState, model, until=lambda f: len(f) >= 2)
    assert shares(desired[-1]) == [(1, "PRODUCTION", 100)]
    production = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert production.version == 1
    deployments = await h.registry.ListDeployments(pb.ListDeploymentsRequest(model=model))
    assert any(d.reason == words for d in deployments.deployments), "the registry's ledger says why"


async def test_a_silent_canary_is_paused_when_the_spec_says_so_and_a_resume_restarts_the_clock(
    harness, unique
):
    h = harness
    model, (_v1, v2) = await new_model(
        h, unique, steps=(50, 100), production=1, health_timeout_seconds=2, on_health_timeout="pause"
    )
    h.monitor.modes[(model, 2)] = "unavailable"
    await h.publisher.publish(await claimed(h, v2))

    async def paused():
        rollout = await rollout_of(h, model)
        return rollout if rollout.state == S.ROLLOUT_STATE_PAUSED else None

    rollout = await eventually(paused, timeout_s=20, what="the pause")
    assert re.fullmatch(
        rf"no health verdict for 2 s after step 1 of 2 \(50%\): {UNREACHABLE}; "
        r"paused: a person resumes or rolls back",
        rollout.reason,
    ), rollout.reason
    assert rollout.history[-1].actor == "mlops-deployer" and not rollout.HasField("finished_at")
    production = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert production.version == 1

    # A person resumes while the monitor is still away: the timeout counts afresh from the resume,
    # so the rollout pauses again, not at once.
    resumed = await h.deployer.Resume(dpb.RolloutActionRequest(model=model, actor="erin"))
    again = await eventually(paused, timeout_s=20, what="the second pause")
    waited = (again.updated_at.ToDatetime() - resumed.updated_at.ToDatetime()).total_seconds()
    assert waited >= 2, f"paused again {waited:.1f}s after the resume: the clock did not restart"
    await h.deployer.Resume(dpb.RolloutActionRequest(model=model, actor="erin"))
    h.monitor.modes[(model, 2)] = "healthy"
    assert (await finished(h, model)).state == S.ROLLOUT_STATE_PROMOTED


async def test_the_health_timeout_clock_survives_a_deployer_restart(harness, unique):
    h = harness
    timeout = 5
    model, (_v1, v2) = await new_model(
        h, unique, steps=(50, 100), production=1, health_timeout_seconds=timeout
    )
    h.monitor.modes[(model, 2)] = "unavailable"
    await h.publisher.publish(await claimed(h, v2))

    async def held():
        rollout = await rollout_of(h, model)
        return rollout if rollout.reason.startswith("holding") else None

    await eventually(held, timeout_s=20, what="the hold")
    await asyncio.sleep(2)  # part of the timeout passes ...
    await h.stop_watch()  # ... the deployer goes away ...
    await asyncio.sleep(1)
    h.start_watch(h.make_core())  # ... and a new one takes over from the database
    rollout = await finished(h, model, 2)
    assert rollout.state == S.ROLLOUT_STATE_ROLLED_BACK
    waited = (rollout.finished_at.ToDatetime() - rollout.step_started_at.ToDatetime()).total_seconds()
    assert waited < STEP_SECONDS + timeout + 2.5, f"rolled back {waited:.1f}s in: the clock restarted"


async def test_bad_requests_get_clear_statuses(harness, unique):
    h = harness
    model, (_v1, _v2) = await new_model(h, unique, production=1)

    async def status_of(call):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        return raised.value.code(), raised.value.details()

    code, details = await status_of(h.deployer.GetRollout(dpb.GetRolloutRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == "give a model name or a rollout_id"
    code, details = await status_of(h.deployer.StartRollout(dpb.StartRolloutRequest(model=model, version=0)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "version must be a model version" in details
    code, details = await status_of(
        h.deployer.StartRollout(dpb.StartRolloutRequest(model=model, version=2, strategy="linear"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'linear' is not one of canary, shadow" in details
    code, details = await status_of(h.deployer.StartRollout(dpb.StartRolloutRequest(model=model, version=99)))
    assert code == grpc.StatusCode.NOT_FOUND and "99" in details
    code, details = await status_of(
        h.deployer.GetRollout(dpb.GetRolloutRequest(rollout_id=str(uuid.uuid4())))
    )
    assert code == grpc.StatusCode.NOT_FOUND and "no rollout with id" in details
    code, details = await status_of(h.deployer.Promote(dpb.RolloutActionRequest(model=model)))
    assert code == grpc.StatusCode.NOT_FOUND and "has no rollouts" in details
    code, details = await status_of(h.deployer.GetDesiredState(dpb.GetDesiredStateRequest(model=model)))
    assert code == grpc.StatusCode.NOT_FOUND and "no desired state" in details
    code, details = await status_of(h.deployer.ListRollouts(dpb.ListRolloutsRequest(page_token="garbage")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details

    started = await h.deployer.StartRollout(
        dpb.StartRolloutRequest(model=model, version=2, strategy="shadow", actor="carol", reason="try it")
    )
    assert (
        started.strategy == "shadow"
        and started.state == S.ROLLOUT_STATE_SHADOWING
        and started.actor == "user:admin"
    )
    code, details = await status_of(h.deployer.StartRollout(dpb.StartRolloutRequest(model=model, version=2)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "already being rolled out" in details
    code, details = await status_of(h.deployer.Resume(dpb.RolloutActionRequest(model=model)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "is not paused" in details
    desired = await published(h, S.DesiredState, model, until=lambda f: len(f) >= 1)
    assert shares(desired[0]) == [(1, "PRODUCTION", 100), (2, "SHADOW", 0)]
    done = await finished(h, model)
    assert done.state == S.ROLLOUT_STATE_PROMOTED and done.reason.startswith("shadow healthy")
    code, details = await status_of(h.deployer.StartRollout(dpb.StartRolloutRequest(model=model, version=2)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and details == f"{model} v2 is already in production"


async def test_the_cli_steers_a_rollout(harness, unique):
    h = harness
    model, (_v1, _v2) = await new_model(h, unique, step_seconds=60, production=1)

    async def mlops(*args: str) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"}
        env |= {"MLOPS_DEPLOYER_ADDR": h.deployer_addr, "COLUMNS": "200"}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mlops.cli",
            *args,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        return process.returncode, out.decode(), err.decode()

    code, out, err = await mlops("rollout", "start", model, "2", "--reason", "by hand", "--actor", "dave")
    assert code == 0, err
    assert "canary" in out and "PROGRESSING".lower() in out and "by hand" in out
    code, out, err = await mlops("rollout", "pause", model, "--actor", "dave")
    assert code == 0 and "paused" in out, err
    code, out, err = await mlops("--json", "rollout", "status", model)
    assert code == 0, err
    import json

    status = json.loads(out)
    assert status["state"] == "ROLLOUT_STATE_PAUSED" and status["candidateVersion"] == "2"
    code, out, err = await mlops("rollout", "resume", model, "--actor", "dave")
    assert code == 0 and "progressing" in out, err
    code, out, err = await mlops("rollout", "resume", model)
    assert code == 1 and "is not paused" in err
    code, out, err = await mlops("rollout", "promote", model, "--actor", "dave", "--reason", "ship it")
    assert code == 0 and "promoted" in out, err
    code, out, err = await mlops("rollout", "desired", model)
    assert code == 0 and "PRODUCTION".lower() in out.lower() and "100%" in out, err
    code, out, err = await mlops("rollout", "rollback", model, "--actor", "dave")
    assert code == 0 and "rolled_back" in out, err
    code, out, err = await mlops("rollout", "list", model)
    assert code == 0 and out.count(model) == 2, out
    code, out, err = await mlops("rollout", "status", f"nothing-{unique}")
    assert code == 3 and "has no rollouts" in err
    production = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert production.version == 1


async def test_the_migrated_schema_matches_the_models(database):
    from tests.integration.test_migrations import _differences

    await migrate(database, MIGRATIONS, SCHEMA)
    async with database.engine.connect() as connection:
        differences = await connection.run_sync(_differences, SCHEMA)
    assert differences == []
