"""The deployer's rules without any service: shares per strategy, judgements and decisions."""

from __future__ import annotations

import pytest

from services.deployer import policy
from services.deployer.policy import Action, Bounds, Health, Share, Verdict, decide, judge

BOUNDS = Bounds(max_error_rate=0.01, max_p99_latency_ms=50, min_requests=20, max_prediction_drift=0.2)


def test_each_strategy_has_its_steps():
    assert policy.steps_of("canary", [10, 50, 100]) == [10, 50, 100]
    assert policy.steps_of("shadow", []) == [0]
    assert policy.steps_of("blue_green", []) == [0, 100]
    assert policy.steps_of("direct", []) == [100]
    with pytest.raises(ValueError, match="'linear' is not one of"):
        policy.steps_of("linear", [])


def test_canary_splits_traffic_and_keeps_the_baseline_loaded_at_the_last_step():
    steps = [10, 50, 100]
    assert policy.shares_at("canary", steps, 0, candidate=2, baseline=1) == [
        Share(1, policy.PRODUCTION, 90),
        Share(2, policy.CANARY_ROLE, 10),
    ]
    assert policy.shares_at("canary", steps, 2, candidate=2, baseline=1) == [
        Share(1, policy.PRODUCTION, 0),
        Share(2, policy.CANARY_ROLE, 100),
    ]


def test_a_shadow_sees_a_copy_at_zero_percent_and_green_starts_at_zero():
    assert policy.shares_at("shadow", [0], 0, candidate=2, baseline=1) == [
        Share(1, policy.PRODUCTION, 100),
        Share(2, policy.SHADOW_ROLE, 0),
    ]
    assert policy.shares_at("blue_green", [0, 100], 0, candidate=2, baseline=1)[1] == Share(
        2, policy.CANARY_ROLE, 0
    )
    assert policy.min_requests_at("blue_green", 0, 20) == 0
    assert policy.min_requests_at("blue_green", 1, 20) == 20
    assert policy.min_requests_at("canary", 0, 20) == 20


def test_healthy_within_every_bound():
    judgement = judge(Health(100, 0.0, 12.0, 0.05), BOUNDS, min_requests=20)
    assert judgement.verdict is Verdict.HEALTHY
    assert "error rate 0 <= 0.01" in judgement.reason and "100 requests >= 20" in judgement.reason


@pytest.mark.parametrize(
    ("health", "bound", "words"),
    [
        (Health(100, 0.2, 12.0), "max_error_rate", "error rate 0.2 > max_error_rate 0.01"),
        (Health(100, 0.0, 71.2), "max_p99_latency_ms", "p99 latency 71.2 ms > max_p99_latency_ms 50 ms"),
        (
            Health(100, 0.0, 1.0, 0.5),
            "max_prediction_drift",
            "prediction drift (PSI against the baseline) 0.5 > 0.2",
        ),
    ],
)
def test_a_broken_bound_is_named(health, bound, words):
    judgement = judge(health, BOUNDS, min_requests=20)
    assert judgement.verdict is Verdict.BROKEN and judgement.bound == bound
    assert words in judgement.reason


def test_drift_is_not_judged_when_its_bound_is_zero_or_the_monitor_gives_none():
    off = Bounds(0.01, 50, 20, 0.0)
    assert judge(Health(100, 0.0, 1.0, 9.0), off, min_requests=20).verdict is Verdict.HEALTHY
    assert judge(Health(100, 0.0, 1.0, None), BOUNDS, min_requests=20).verdict is Verdict.HEALTHY


def test_too_few_requests_are_not_judged_even_when_they_all_failed():
    judgement = judge(Health(5, 1.0, 900.0), BOUNDS, min_requests=20)
    assert judgement.verdict is Verdict.TOO_FEW_REQUESTS
    assert "only 5 requests answered, fewer than min_requests 20" in judgement.reason


def test_no_answer_says_why():
    judgement = judge(None, BOUNDS, min_requests=20, no_answer="DeadlineExceeded: deadline")
    assert judgement.verdict is Verdict.NO_ANSWER
    assert "the monitor did not answer (DeadlineExceeded: deadline)" == judgement.reason


def _decide(verdict, *, elapsed=30.0, last=False, paused=False, auto=True):
    judgement = policy.Judgement(verdict, "why")
    return decide(
        judgement, elapsed_s=elapsed, step_seconds=20, last_step=last, paused=paused, auto_promote=auto
    )


def test_a_broken_bound_rolls_back_at_once_even_mid_step_and_paused():
    assert _decide(Verdict.BROKEN, elapsed=1.0).action is Action.ROLLBACK
    assert _decide(Verdict.BROKEN, paused=True).action is Action.ROLLBACK


def test_a_step_waits_its_time_then_advances_or_promotes():
    assert _decide(Verdict.HEALTHY, elapsed=5.0).action is Action.WAIT
    assert _decide(Verdict.HEALTHY).action is Action.ADVANCE
    assert _decide(Verdict.HEALTHY, last=True).action is Action.PROMOTE
    assert _decide(Verdict.HEALTHY, last=True, auto=False).action is Action.AWAIT_PROMOTION


def test_no_answer_or_too_few_requests_hold_and_never_promote():
    for verdict in (Verdict.NO_ANSWER, Verdict.TOO_FEW_REQUESTS):
        assert _decide(verdict, last=True).action is Action.HOLD
        assert _decide(verdict, elapsed=3.0).action is Action.WAIT


def test_a_paused_rollout_does_not_step_on():
    assert _decide(Verdict.HEALTHY, paused=True, last=True).action is Action.WAIT


def test_step_labels_read_as_people_count():
    assert policy.step_label("canary", [10, 50, 100], 1) == "step 2 of 3 (50%)"
    assert policy.step_label("blue_green", [0, 100], 1).startswith("all traffic on green")
