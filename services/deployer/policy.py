"""The rollout rules, pure: what each strategy serves at each step, and what to do next given the
candidate's live health. No I/O here; the core applies the decisions.

A step is judged on the monitor's answer for the candidate over the last `step_seconds`:

- a bound broken (error rate, p99 latency, prediction drift), with at least `min_requests` answered,
  rolls back at once, at any moment of the step and even while paused;
- at the end of the step, the candidate steps on (or is promoted after the last step) only when the
  monitor answered, the candidate answered at least `min_requests` requests and every bound held;
- no answer from the monitor, or too few requests, holds the step and says why: never a promotion
  without an answer;
- a hold does not last forever: once `health_timeout_seconds` have passed after the step's time
  with no verdict (healthy or broken) and no person resuming, the rollout is rolled back or paused
  (`on_health_timeout`), so that a silent canary never keeps its share of live traffic unwatched.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mlops import spec_defaults
from mlops.events.v1 import common_pb2

CANARY, SHADOW, BLUE_GREEN, DIRECT = "canary", "shadow", "blue_green", "direct"
STRATEGIES = (CANARY, SHADOW, BLUE_GREEN, DIRECT)

ROLLBACK_ON_TIMEOUT, PAUSE_ON_TIMEOUT = "rollback", "pause"
HEALTH_TIMEOUT_ACTIONS = (ROLLBACK_ON_TIMEOUT, PAUSE_ON_TIMEOUT)
DEFAULT_HEALTH_TIMEOUT_S = int(spec_defaults.ROLLOUT["health_timeout_seconds"])
"""The spec's default, for rollouts whose spec was stored before the field existed."""

PRODUCTION = common_pb2.SERVING_ROLE_PRODUCTION
CANARY_ROLE = common_pb2.SERVING_ROLE_CANARY
SHADOW_ROLE = common_pb2.SERVING_ROLE_SHADOW


def steps_of(strategy: str, spec_steps: list[int]) -> list[int]:
    """The candidate's traffic share at each judged step.

    canary: the spec's steps (e.g. 10, 50, 100). shadow: one step at 0% where the candidate sees a
    copy of every request. blue_green: green loaded at 0% beside blue, then all traffic on green
    with blue still loaded for an instant way back. direct: no judged step.
    """
    if strategy == CANARY:
        return list(spec_steps) or [100]
    if strategy == SHADOW:
        return [0]
    if strategy == BLUE_GREEN:
        return [0, 100]
    if strategy == DIRECT:
        return [100]
    raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")


@dataclass(frozen=True)
class Share:
    """One version's part in a desired state."""

    version: int
    role: int
    traffic_percent: int


def shares_at(
    strategy: str, steps: list[int], step_index: int, *, candidate: int, baseline: int
) -> list[Share]:
    """What serves while the rollout stands at `step_index`: the candidate's share and role, and the
    baseline answering the rest (kept loaded at 0% when the candidate answers everything)."""
    percent = steps[step_index]
    role = SHADOW_ROLE if strategy == SHADOW else CANARY_ROLE
    shares = [Share(baseline, PRODUCTION, 100 - percent if role == CANARY_ROLE else 100)]
    shares.append(Share(candidate, role, percent if role == CANARY_ROLE else 0))
    return shares


def step_label(strategy: str, steps: list[int], step_index: int) -> str:
    """A step as people read it: `step 2 of 3 (50%)`, `shadow`, `green beside blue (0%)`."""
    if strategy == SHADOW:
        return "shadow (0%, a copy of every request)"
    if strategy == BLUE_GREEN:
        return (
            "green loaded beside blue (0%)" if step_index == 0 else "all traffic on green (100%, blue kept)"
        )
    return f"step {step_index + 1} of {len(steps)} ({steps[step_index]}%)"


def min_requests_at(strategy: str, step_index: int, min_requests: int) -> int:
    """Requests the candidate must answer before a step is judged. Green at 0% answers no live traffic:
    its first step is judged on the monitor's answer and whatever requests it did see."""
    if strategy == BLUE_GREEN and step_index == 0:
        return 0
    return min_requests


@dataclass(frozen=True)
class Bounds:
    max_error_rate: float
    max_p99_latency_ms: float
    min_requests: int
    max_prediction_drift: float
    """0: prediction drift is not judged."""


@dataclass(frozen=True)
class Health:
    """What the monitor said about the candidate over the window."""

    request_count: int
    error_rate: float
    latency_p99_ms: float
    prediction_drift: float | None = None


class Verdict(enum.Enum):
    HEALTHY = "healthy"
    BROKEN = "broken"
    TOO_FEW_REQUESTS = "too_few_requests"
    NO_ANSWER = "no_answer"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str
    bound: str = ""
    """The broken bound's spec name (`max_error_rate`, …) when the verdict is BROKEN."""
    cause: str = ""
    """Why there is no verdict, in a few words (`monitor unreachable (UNAVAILABLE)`, `only 3 of 20
    requests`), for the reason of a health timeout."""

    @property
    def is_verdict(self) -> bool:
        """The monitor said healthy or broken: the silence clock starts again."""
        return self.verdict in (Verdict.HEALTHY, Verdict.BROKEN)


def _n(value: float) -> str:
    return f"{value:.4g}"


def judge(
    health: Health | None,
    bounds: Bounds,
    *,
    min_requests: int,
    no_answer: str = "",
    no_answer_code: str = "",
) -> Judgement:
    """The candidate's health against the bounds. `health` None means the monitor did not answer
    (`no_answer` says how, `no_answer_code` is its status name: UNAVAILABLE, DEADLINE_EXCEEDED)."""
    if health is None:
        return Judgement(
            Verdict.NO_ANSWER,
            f"the monitor did not answer ({no_answer or 'no reason given'})",
            cause=f"monitor unreachable ({no_answer_code or 'no answer'})",
        )
    if health.request_count < min_requests:
        return Judgement(
            Verdict.TOO_FEW_REQUESTS,
            f"only {health.request_count} requests answered, fewer than min_requests {min_requests}",
            cause=f"only {health.request_count} of {min_requests} requests",
        )
    if health.error_rate > bounds.max_error_rate:
        return Judgement(
            Verdict.BROKEN,
            f"error rate {_n(health.error_rate)} > max_error_rate {_n(bounds.max_error_rate)}",
            "max_error_rate",
        )
    if health.latency_p99_ms > bounds.max_p99_latency_ms:
        return Judgement(
            Verdict.BROKEN,
            f"p99 latency {_n(health.latency_p99_ms)} ms > max_p99_latency_ms {_n(bounds.max_p99_latency_ms)} ms",
            "max_p99_latency_ms",
        )
    drift = health.prediction_drift
    if drift is not None and bounds.max_prediction_drift > 0 and drift > bounds.max_prediction_drift:
        return Judgement(
            Verdict.BROKEN,
            f"prediction drift (PSI against the baseline) {_n(drift)} > {_n(bounds.max_prediction_drift)}",
            "max_prediction_drift",
        )
    parts = [
        f"error rate {_n(health.error_rate)} <= {_n(bounds.max_error_rate)}",
        f"p99 {_n(health.latency_p99_ms)} ms <= {_n(bounds.max_p99_latency_ms)} ms",
        f"{health.request_count} requests >= {min_requests}",
    ]
    if drift is not None and bounds.max_prediction_drift > 0:
        parts.append(f"prediction drift {_n(drift)} <= {_n(bounds.max_prediction_drift)}")
    return Judgement(Verdict.HEALTHY, ", ".join(parts))


class Action(enum.Enum):
    WAIT = "wait"
    """Nothing to do yet: the step runs, or the rollout is paused."""
    HOLD = "hold"
    """The step is over but cannot be judged: no answer, or too few requests."""
    ADVANCE = "advance"
    PROMOTE = "promote"
    AWAIT_PROMOTION = "await_promotion"
    """Healthy after the last step, and auto_promote is off: a person promotes."""
    ROLLBACK = "rollback"
    PAUSE = "pause"
    """No verdict for the health timeout and the spec says pause: a person resumes or rolls back."""


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


def silent_seconds(*, elapsed_s: float, step_seconds: float, since_verdict_s: float | None) -> float:
    """How long the rollout has waited for a verdict it needs: counted from the end of the step's time,
    or from the latest verdict or a person's resume when that came later (`since_verdict_s`, seconds
    ago; None when none came during this step). Negative while the step's time runs."""
    after_step = elapsed_s - step_seconds
    return after_step if since_verdict_s is None else min(after_step, since_verdict_s)


def health_timeout_reason(judgement: Judgement, *, timeout_s: float, step: str, action: str) -> str:
    """What a health timeout did, and why: `no health verdict for 120 s after step 2 of 3 (50%):
    monitor unreachable (UNAVAILABLE); rolled back`."""
    done = "rolled back" if action == ROLLBACK_ON_TIMEOUT else "paused: a person resumes or rolls back"
    cause = judgement.cause or judgement.reason
    return f"no health verdict for {timeout_s:g} s after {step}: {cause}; {done}"


def decide(
    judgement: Judgement,
    *,
    elapsed_s: float,
    step_seconds: float,
    last_step: bool,
    paused: bool,
    auto_promote: bool,
    since_verdict_s: float | None = None,
    health_timeout_s: float = 0,
    on_health_timeout: str = ROLLBACK_ON_TIMEOUT,
    step: str = "the step",
) -> Decision:
    """The next move of a running rollout. A step that cannot be judged holds; after
    `health_timeout_s` of holding without a verdict (0: never), `on_health_timeout` is taken. A
    paused rollout is a person's hold (or a timeout's already): it waits for them."""
    if judgement.verdict is Verdict.BROKEN:
        return Decision(Action.ROLLBACK, judgement.reason)
    if paused:
        return Decision(Action.WAIT, "paused")
    if elapsed_s < step_seconds:
        return Decision(Action.WAIT, f"{elapsed_s:.0f}s of {step_seconds:g}s into the step")
    if judgement.verdict in (Verdict.NO_ANSWER, Verdict.TOO_FEW_REQUESTS):
        silent = silent_seconds(
            elapsed_s=elapsed_s, step_seconds=step_seconds, since_verdict_s=since_verdict_s
        )
        if health_timeout_s > 0 and silent >= health_timeout_s:
            if on_health_timeout not in HEALTH_TIMEOUT_ACTIONS:
                raise ValueError(
                    f"on_health_timeout {on_health_timeout!r} is not one of {', '.join(HEALTH_TIMEOUT_ACTIONS)}"
                )
            action = Action.PAUSE if on_health_timeout == PAUSE_ON_TIMEOUT else Action.ROLLBACK
            reason = health_timeout_reason(
                judgement, timeout_s=health_timeout_s, step=step, action=on_health_timeout
            )
            return Decision(action, reason)
        return Decision(Action.HOLD, judgement.reason)
    if not last_step:
        return Decision(Action.ADVANCE, judgement.reason)
    if auto_promote:
        return Decision(Action.PROMOTE, judgement.reason)
    return Decision(Action.AWAIT_PROMOTION, judgement.reason)
