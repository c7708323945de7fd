"""A step that cannot be judged (monitor unreachable, too few requests) holds only for the spec's
`health_timeout_seconds`, then rolls back or pauses and says why. Pure policy, no server."""

from __future__ import annotations

import pytest

from services.deployer import policy
from services.deployer.policy import Action, Bounds, Health, decide, judge

BOUNDS = Bounds(max_error_rate=0.01, max_p99_latency_ms=50, min_requests=20, max_prediction_drift=0.2)
UNREACHABLE = judge(
    None, BOUNDS, min_requests=20, no_answer="Unavailable: connection refused", no_answer_code="UNAVAILABLE"
)
TOO_FEW = judge(Health(3, 0.0, 1.0), BOUNDS, min_requests=20)


def _decide(judgement, *, elapsed, since=None, timeout=120, on="rollback", paused=False, last=False):
    return decide(
        judgement,
        elapsed_s=elapsed,
        step_seconds=20,
        last_step=last,
        paused=paused,
        auto_promote=True,
        since_verdict_s=since,
        health_timeout_s=timeout,
        on_health_timeout=on,
        step="step 2 of 3 (50%)",
    )


def test_no_answer_names_the_status_and_too_few_names_the_count():
    assert UNREACHABLE.cause == "monitor unreachable (UNAVAILABLE)"
    assert TOO_FEW.cause == "only 3 of 20 requests"
    assert not UNREACHABLE.is_verdict and not TOO_FEW.is_verdict
    assert judge(Health(100, 0.0, 1.0), BOUNDS, min_requests=20).is_verdict
    assert judge(Health(100, 0.5, 1.0), BOUNDS, min_requests=20).is_verdict


@pytest.mark.parametrize("judgement", [UNREACHABLE, TOO_FEW])
def test_a_hold_shorter_than_the_timeout_still_holds(judgement):
    assert _decide(judgement, elapsed=20 + 119.9).action is Action.HOLD
    assert _decide(judgement, elapsed=10).action is Action.WAIT, "the step's own time is not silence"


@pytest.mark.parametrize(
    ("judgement", "cause"),
    [(UNREACHABLE, "monitor unreachable (UNAVAILABLE)"), (TOO_FEW, "only 3 of 20 requests")],
)
def test_no_verdict_for_the_timeout_after_the_step_rolls_back_and_says_why(judgement, cause):
    decision = _decide(judgement, elapsed=20 + 120)
    assert decision.action is Action.ROLLBACK
    assert decision.reason == f"no health verdict for 120 s after step 2 of 3 (50%): {cause}; rolled back"


def test_the_spec_may_pause_instead():
    decision = _decide(UNREACHABLE, elapsed=200, on="pause")
    assert decision.action is Action.PAUSE
    assert decision.reason.startswith("no health verdict for 120 s after step 2 of 3 (50%): monitor unre")
    assert decision.reason.endswith("; paused: a person resumes or rolls back")


def test_a_paused_rollout_is_not_timed_out_again():
    assert _decide(UNREACHABLE, elapsed=10_000, paused=True).action is Action.WAIT


def test_a_recent_verdict_or_resume_restarts_the_silence():
    # The step ended long ago, but the monitor gave a verdict 30 s ago (or a person resumed).
    assert _decide(TOO_FEW, elapsed=1_000, since=30).action is Action.HOLD
    assert _decide(TOO_FEW, elapsed=1_000, since=120).action is Action.ROLLBACK
    # A verdict during the step's own time does not shorten the wait after it.
    assert _decide(TOO_FEW, elapsed=20 + 60, since=70).action is Action.HOLD
    assert policy.silent_seconds(elapsed_s=80, step_seconds=20, since_verdict_s=70) == 60
    assert policy.silent_seconds(elapsed_s=80, step_seconds=20, since_verdict_s=None) == 60
    assert policy.silent_seconds(elapsed_s=80, step_seconds=20, since_verdict_s=5) == 5


def test_a_verdict_is_acted_on_whatever_the_silence_before():
    healthy = judge(Health(100, 0.0, 1.0), BOUNDS, min_requests=20)
    assert _decide(healthy, elapsed=10_000).action is Action.ADVANCE
    broken = judge(Health(100, 0.5, 1.0), BOUNDS, min_requests=20)
    decision = _decide(broken, elapsed=10_000)
    assert decision.action is Action.ROLLBACK and decision.reason.startswith("error rate 0.5 >")


def test_a_zero_timeout_holds_forever_and_an_unknown_action_is_refused():
    assert _decide(UNREACHABLE, elapsed=10**6, timeout=0).action is Action.HOLD
    with pytest.raises(ValueError, match="on_health_timeout 'retry' is not one of rollback, pause"):
        _decide(UNREACHABLE, elapsed=10**6, on="retry")


def test_the_health_deadline_is_the_steps_time_plus_the_timeout_from_the_latest_verdict():
    from datetime import UTC, datetime, timedelta

    from mlops.deployer.v1 import deployer_pb2
    from mlops.events.v1 import deployment_pb2
    from services.deployer.storage import StoredRollout, health_deadline

    started = datetime(2026, 1, 1, tzinfo=UTC)
    rollout = deployer_pb2.Rollout(state=deployment_pb2.ROLLOUT_STATE_PROGRESSING, step_seconds=20)
    rollout.step_started_at.FromDatetime(started)
    stored = StoredRollout(
        rollout=rollout, candidate=None, baseline=None, batching=None, health_timeout_s=120
    )
    assert health_deadline(stored) == started + timedelta(seconds=140)
    stored.verdict_at = started + timedelta(seconds=60)  # a resume after the step's time
    assert health_deadline(stored) == started + timedelta(seconds=180)
    stored.health_timeout_s = 0
    assert health_deadline(stored) is None, "no timeout: no deadline"
    stored.health_timeout_s = 120
    rollout.state = deployment_pb2.ROLLOUT_STATE_PAUSED
    assert health_deadline(stored) is None, "a paused rollout waits for a person"
