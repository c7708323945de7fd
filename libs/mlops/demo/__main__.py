"""`make demo`: the closed loop on the local stack, driven the way users drive it.

1. `mlops apply -f wine-quality.yaml` declares the model: training, gate, canary rollout, monitor policy.
2. `mlops data commit wine.csv` stores scikit-learn's bundled wine data set; the registry records the
   version and announces it (`DatasetVersionRecorded`). The trainer trains it (torch → ONNX), the evaluator gates it, the
   deployer puts it in production and the inference servers load it.
3. Clients call the model over the Open Inference Protocol, and the truth of each answer is
   published later as `GroundTruthLogged`. First the traffic looks like the training data: no alarm.
4. Then it shifts, as it does when an upstream system changes. The monitor sees the drift for the
   spec's number of windows, commits the labelled drifted traffic as data for a retrain (one
   `DataCommitted` carrying the intent; the registry records it), and the loop runs again: retrain → evaluation against the champion → canary steps judged on live
   health → a new production version.
5. A summary (versions, metrics, gate verdicts, rollout steps, drift scores, the loop's own overhead)
   and the trace of the loop, drawn from Jaeger, with its link.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from mlops.demo.loop import EventTail, Seen, Traffic, shift_features, wait_ready
from mlops.events.v1 import (
    data_pb2,
    deployment_pb2,
    evaluation_pb2,
    monitoring_pb2,
    training_pb2,
)

SPEC = Path(__file__).with_name("wine-quality.yaml")
MODEL = "wine-quality"
DATASET = "wine"
INFERENCE = os.environ.get("MLOPS_INFERENCE_ADDR", "127.0.0.1:8001")
JAEGER = os.environ.get("MLOPS_JAEGER_QUERY_URL", "http://127.0.0.1:16686")
# The upstream change the demo plays: four measurements read 2.5 standard deviations high.
RUNNING = {
    "ROLLOUT_STATE_PENDING",
    "ROLLOUT_STATE_SHADOWING",
    "ROLLOUT_STATE_PROGRESSING",
    "ROLLOUT_STATE_PAUSED",
}
SHIFT = {"alcohol": 2.5, "flavanoids": 2.5, "color_intensity": 2.5, "proline": 2.5}

FOLLOWED = [
    data_pb2.DataCommitted,
    data_pb2.DatasetVersionRecorded,
    training_pb2.TrainingStarted,
    training_pb2.ModelTrained,
    training_pb2.TrainingFailed,
    evaluation_pb2.ModelEvaluated,
    deployment_pb2.RolloutProgressed,
    deployment_pb2.ModelDeployed,
    deployment_pb2.ModelRolledBack,
    monitoring_pb2.DriftDetected,
    monitoring_pb2.PerformanceDegraded,
    training_pb2.RetrainRequested,
]


def mlops(*args: str, json_output: bool = False, show: bool = True) -> dict | list | None:
    """Run the CLI as a user would; stop the demo with its message when it fails."""
    command = [sys.executable, "-m", "mlops.cli", *(["--json"] if json_output else []), *args]
    shown = " ".join(["mlops", *args])
    if show:
        print(f"\n$ {shown}", flush=True)
    result = subprocess.run(command, capture_output=json_output, text=True)
    if result.returncode != 0:
        if json_output:
            sys.stderr.write(result.stderr)
        raise SystemExit(f"`{shown}` failed with exit code {result.returncode}")
    return json.loads(result.stdout) if json_output else None


class Story:
    """Prints each event as it arrives, with the time since the demo began."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"  {time.monotonic() - self.started:6.1f}s  {text}", flush=True)

    def __call__(self, seen: Seen) -> None:
        line = describe(seen.event)
        if line:
            self.say(line)


def describe(event) -> str:
    match event:
        case data_pb2.DataCommitted():
            return f"DataCommitted     {event.dataset} {event.sha256[:12]} by {event.committed_by or '?'}"
        case data_pb2.DatasetVersionRecorded():
            why = f" to retrain {event.retrain.model}" if event.HasField("retrain") else ""
            return f"DatasetRecorded   {event.dataset}@{event.version} {event.sha256[:12]}{why}"
        case training_pb2.TrainingStarted():
            return f"TrainingStarted   {event.model} on {event.dataset}@{event.dataset_version}"
        case training_pb2.ModelTrained():
            took = event.training_duration.ToTimedelta().total_seconds()
            return f"ModelTrained      {event.model}@{event.version} in {took:.2f} s"
        case training_pb2.TrainingFailed():
            return f"TrainingFailed    {event.model}: {event.reason}"
        case evaluation_pb2.ModelEvaluated():
            verdict = "passed" if event.passed else "FAILED"
            champion = f" vs champion v{event.champion_version}" if event.champion_version else ""
            return f"ModelEvaluated    {event.model}@{event.version}{champion}: gate {verdict}"
        case deployment_pb2.RolloutProgressed():
            state = common_state(event.state)
            return (
                f"RolloutProgressed {event.model}@{event.candidate_version} {state} "
                f"{event.traffic_percent}% (step {event.step_index + 1}/{max(event.step_count, 1)}): {event.reason}"
            )
        case deployment_pb2.ModelDeployed():
            return f"ModelDeployed     {event.model}@{event.version} in production ({event.reason})"
        case deployment_pb2.ModelRolledBack():
            return (
                f"ModelRolledBack   {event.model}@{event.from_version} → v{event.to_version}: {event.reason}"
            )
        case monitoring_pb2.DriftDetected():
            drifted = sum(f.drifted for f in event.features)
            return (
                f"DriftDetected     {event.model}@{event.version}: {drifted} of {len(event.features)} features, "
                f"{event.consecutive_windows} windows in a row"
            )
        case monitoring_pb2.PerformanceDegraded():
            return f"PerformanceDegraded {event.model}@{event.version}: {event.metric} {event.observed:.3f}"
        case training_pb2.RetrainRequested():
            return f"RetrainRequested  {event.model}: {event.reason}"
    return ""


def common_state(state: int) -> str:
    return deployment_pb2.RolloutState.Name(state).removeprefix("ROLLOUT_STATE_").lower()


def write_wine(path: Path) -> None:
    """scikit-learn's wine data set (178 wines, 13 measurements, 3 cultivars), as a CSV export."""
    from sklearn.datasets import load_wine

    load_wine(as_frame=True).frame.to_csv(path, index=False)


def wine() -> tuple[list[str], np.ndarray, list[str]]:
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    columns = [c for c in frame.columns if c != "target"]
    return columns, frame[columns].to_numpy(np.float32), [str(v) for v in frame["target"]]


async def run() -> int:
    spec = yaml.safe_load(SPEC.read_text())["spec"]
    window_s = spec["monitor"]["window_seconds"]
    story = Story()
    print(
        "The closed loop, on the local stack. Every step below goes through the platform's public "
        "surfaces: the mlops CLI, Kafka topics, the Open Inference Protocol, Jaeger."
    )
    mlops("apply", "-f", str(SPEC))

    tail = EventTail(FOLLOWED, keys=[MODEL, DATASET], since_ms=int(time.time() * 1000) - 1000)
    await tail.start()
    try:
        return await _loop(tail, story, window_s)
    finally:
        await tail.stop()


async def _loop(tail: EventTail, story: Story, window_s: int) -> int:
    columns, features, labels = wine()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wine.csv"
        write_wine(path)
        committed = mlops(
            "data", "commit", str(path), "--dataset", DATASET, "--label", "source=demo", json_output=True
        )
    assert isinstance(committed, dict)
    dataset_version = int(committed["datasetVersion"]["version"])
    print(f"  data set {DATASET}@{dataset_version}: {committed['datasetVersion']['uri']}")

    print("\n1. Training, evaluation and the first deployment", flush=True)
    if committed.get("created", False):
        deployed = await tail.wait_for(
            deployment_pb2.ModelDeployed, timeout_s=300, on_event=story, what="first production version"
        )
        first = deployed.event.version
    else:
        first = await _restore_bundled_version(dataset_version, story)
    try:
        await wait_ready(MODEL, first, address=INFERENCE)
    except TimeoutError as error:
        raise SystemExit(f"{error}; see .stack/logs/") from None
    story.say(f"{MODEL}@{first} answers on {INFERENCE} (Open Inference Protocol)")

    traffic = Traffic(model=MODEL, features=features, labels=labels, address=INFERENCE, rate_per_s=40)
    traffic.start()
    try:
        print(
            f"\n2. Traffic like the training data, for two monitoring windows ({2 * window_s} s): no alarm expected",
            flush=True,
        )
        calm_until = time.monotonic() + 2 * window_s + 2
        while time.monotonic() < calm_until:
            for seen in await tail.poll():
                story(seen)
                if isinstance(seen.event, monitoring_pb2.DriftDetected):
                    raise SystemExit("drift was reported on traffic drawn from the training data")
        story.say(
            f"{sum(traffic.stats.answered.values())} answers, {traffic.stats.total_failed} failures, no drift"
        )

        print(f"\n3. The traffic shifts: {', '.join(f'{k} +{v}σ' for k, v in SHIFT.items())}", flush=True)
        traffic.shift = shift_features(columns, SHIFT, features.std(axis=0))
        drift = await tail.wait_for(monitoring_pb2.DriftDetected, timeout_s=8 * window_s + 60, on_event=story)
        print("\n4. Drift → retrain → evaluation → canary → production", flush=True)
        retrained = await tail.wait_for(
            evaluation_pb2.ModelEvaluated,
            lambda e: e.version > first,
            timeout_s=300,
            on_event=story,
            what="evaluation of the retrained version",
        )
        if not retrained.event.passed:
            raise SystemExit(f"the retrained version {retrained.event.version} failed its gate; see above")
        promoted = await tail.wait_for(
            deployment_pb2.ModelDeployed,
            lambda e: e.version == retrained.event.version,
            timeout_s=300,
            on_event=story,
            what=f"production of v{retrained.event.version}",
        )
    finally:
        stats = await traffic.stop()

    _summary(tail, first, promoted.event.version, drift.event, stats)
    return 0


async def _restore_bundled_version(dataset_version: int, story: Story) -> int:
    """On a repeat run the bundled data set is already trained: put the version trained on it back in
    production (by hand, through the deployer) so that the loop starts from the same place."""
    versions = mlops("models", "list", MODEL, json_output=True, show=False)
    assert isinstance(versions, dict)
    trained = [
        v for v in versions.get("modelVersions", []) if int(v.get("datasetVersion", 0)) == dataset_version
    ]
    if not trained:
        raise SystemExit(
            f"no version of {MODEL} was trained on {DATASET}@{dataset_version}; see `mlops runs list`"
        )
    version = max(int(v["version"]) for v in trained)
    production = mlops("alias", "list", MODEL, json_output=True, show=False)
    current = next((a for a in (production or {}).get("aliases", []) if a.get("alias") == "production"), None)
    rollout = mlops("rollout", "status", MODEL, json_output=True, show=False) or {}
    running = rollout.get("state") in RUNNING
    if current and int(current["version"]) == version and not running:
        story.say(f"{MODEL}@{version}, trained on the bundled data set, is already in production")
        return version
    if current and int(current["version"]) == version:
        story.say(
            f"withdrawing the running rollout of v{rollout['candidateVersion']}: the loop starts from v{version}"
        )
        mlops("rollout", "rollback", MODEL, "--reason", "the demo starts from the bundled data set's model")
        return version
    story.say(
        f"this data set was committed before; putting {MODEL}@{version} (trained on it) back in production"
    )
    mlops(
        "rollout",
        "start",
        MODEL,
        str(version),
        "--strategy",
        "direct",
        "--reason",
        "demo starts from the bundled data",
    )
    return version


def _summary(tail: EventTail, first: int, second: int, drift: monitoring_pb2.DriftDetected, stats) -> None:
    print("\nSummary", flush=True)
    evaluations = [s.event for s in tail.seen if isinstance(s.event, evaluation_pb2.ModelEvaluated)]
    for evaluation in evaluations:
        metrics = ", ".join(
            f"{k}={v:.3f}" for k, v in sorted(evaluation.metrics.items()) if not k.startswith("parity")
        )
        print(f"  v{evaluation.version}: {metrics}")
        for gate in evaluation.gates:
            print(f"      gate {gate.gate}: {'ok' if gate.passed else 'FAILED'} - {gate.message}")
    steps = [
        s.event
        for s in tail.seen
        if isinstance(s.event, deployment_pb2.RolloutProgressed) and s.event.candidate_version == second
    ]
    print(
        f"  rollout of v{second}: "
        + " → ".join(f"{e.traffic_percent}% {common_state(e.state)}" for e in steps)
    )
    top = sorted(drift.features, key=lambda f: f.score, reverse=True)
    print(f"  drift of v{drift.version} ({drift.method}, threshold {drift.threshold}):")
    for feature in top[:6]:
        print(f"      {feature.feature:30s} {feature.score:8.3f} {'DRIFTED' if feature.drifted else ''}")
    print(f"      prediction drift {drift.prediction_drift_score:.3f}")
    answered = sum(stats.answered.values())
    by_version = ", ".join(f"v{v}: {n}" for v, n in sorted(stats.answered.items()))
    print(
        f"  client: {answered} answers ({by_version}), {stats.total_failed} failed, {stats.truths_sent} truths sent"
    )
    overhead = loop_overhead(tail, second)
    if overhead is not None:
        print(
            f"  loop overhead of v{second}: {overhead:.2f} s (data committed → production, less training and "
            "the rollout's configured waits)"
        )
    mlops("trace", f"{MODEL}@{second}", "--wait", "10")
    print("\nTry next:")
    print(
        f"  mlops rollout status {MODEL}        mlops drift status {MODEL}      mlops monitor health {MODEL}"
    )
    print(f"  mlops models lineage {MODEL}@{second}  mlops trace {MODEL}@{first}")
    print(
        '  grpcurl -cacert .stack/clients/ca.pem -H "authorization: Bearer $(cat .stack/clients/viewer.token)" \\\n'
        '      -d \'{"name":"wine-quality"}\' 127.0.0.1:8001 inference.GRPCInferenceService/ModelMetadata'
    )
    print(
        "  mlops context use local-viewer && mlops rollout promote wine-quality   # PERMISSION_DENIED: viewers read"
    )
    print("  make test                          make bench")


def loop_overhead(tail: EventTail, version: int) -> float | None:
    """Data committed → production for `version`, less its training time and the rollout's
    configured step waits: what the platform itself adds."""
    trained = next(
        (
            s
            for s in tail.seen
            if isinstance(s.event, training_pb2.ModelTrained) and s.event.version == version
        ),
        None,
    )
    deployed = next(
        (
            s
            for s in tail.seen
            if isinstance(s.event, deployment_pb2.ModelDeployed) and s.event.version == version
        ),
        None,
    )
    if trained is None or deployed is None:
        return None
    committed = [
        s
        for s in tail.seen
        if isinstance(s.event, data_pb2.DataCommitted | data_pb2.DatasetVersionRecorded)
        and s.event.sha256 == trained.event.dataset_sha256
    ]
    if not committed:
        return None
    steps = [
        s.event
        for s in tail.seen
        if isinstance(s.event, deployment_pb2.RolloutProgressed) and s.event.candidate_version == version
    ]
    spec = yaml.safe_load(SPEC.read_text())["spec"]["rollout"]
    waits = spec.get("step_seconds", 20) * (
        len(spec.get("steps", [])) if steps and steps[0].strategy == "canary" else 0
    )
    total = (deployed.timestamp_ms - committed[0].timestamp_ms) / 1000
    return total - trained.event.training_duration.ToTimedelta().total_seconds() - waits


def main() -> int:
    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
