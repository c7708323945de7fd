"""`make demo`: the platform at work on the local stack, through the same commands a user types.

1. `mlops apply -f wine-quality.yaml` declares the model to the registry.
2. `mlops data commit wine.csv --dataset wine` stores scikit-learn's bundled wine data set in S3
   content-addressed, records the version over gRPC and publishes `DataCommitted` to Kafka.
3. The registry confirms the version; the trainer trains the spec on it (torch), exports ONNX,
   checks parity and registers version N; the evaluator scores it on the held-out rows against the
   `production` champion and applies the gate.
4. The outcome is read back through the CLI, and the trace of the commit, across every service it
   reached, from Jaeger's API, drawn as a tree.
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

from aiokafka import AIOKafkaConsumer

from mlops.bus import ensure_topics, partitions_of
from mlops.events.v1 import evaluation_pb2
from mlops.jaeger import JaegerClient, render_tree
from mlops.settings import BusSettings, KafkaSettings

SPEC = Path(__file__).with_name("wine-quality.yaml")
MODEL = "wine-quality"


def write_dataset(path: Path) -> None:
    """scikit-learn's wine data set (178 wines, 13 measurements, 3 cultivars), as a CSV export."""
    from sklearn.datasets import load_wine

    load_wine(as_frame=True).frame.to_csv(path, index=False)


async def wait_for_evaluation(
    model: str, started_ms: int, timeout_s: float = 180.0
) -> evaluation_pb2.ModelEvaluated:
    """The first ModelEvaluated for `model` published after `started_ms`, read from Kafka."""
    kafka = KafkaSettings()
    await ensure_topics(kafka, BusSettings(), ["mlops.model.evaluated"])
    consumer = AIOKafkaConsumer(**kafka.client_options(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await partitions_of(kafka, "mlops.model.evaluated")
        consumer.assign(partitions)
        # The end first, then the first record since the commit: whichever comes first is where to read.
        ends = await consumer.end_offsets(partitions)
        offsets = await consumer.offsets_for_times({tp: started_ms for tp in partitions})
        for tp in partitions:
            found = offsets.get(tp)
            consumer.seek(tp, found.offset if found is not None else ends[tp])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.key == model.encode():
                        return evaluation_pb2.ModelEvaluated.FromString(record.value)
        raise SystemExit(
            f"no evaluation of {model} within {timeout_s:.0f}s; see `make status` and .stack/logs/"
        )
    finally:
        await consumer.stop()


def mlops(*args: str, json_output: bool = False) -> dict | list | None:
    """Run the CLI as a user would; stop the demo with its message when it fails."""
    command = [sys.executable, "-m", "mlops.cli", *(["--json"] if json_output else []), *args]
    shown = " ".join(["mlops", *args])
    print(f"\n$ {shown}", flush=True)
    result = subprocess.run(command, capture_output=json_output, text=True)
    if result.returncode != 0:
        if json_output:
            sys.stderr.write(result.stderr)
        raise SystemExit(f"`{shown}` failed with exit code {result.returncode}")
    if json_output:
        parsed = json.loads(result.stdout)
        return parsed
    return None


def main() -> int:
    jaeger = JaegerClient(os.environ.get("MLOPS_JAEGER_QUERY_URL", "http://127.0.0.1:16686"))
    mlops("apply", "-f", str(SPEC))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "wine.csv"
        write_dataset(data)
        started = time.monotonic()
        started_ms = int(time.time() * 1000) - 1000
        committed = mlops(
            "data", "commit", str(data), "--dataset", "wine", "--label", "source=demo", json_output=True
        )
    assert isinstance(committed, dict)
    version = committed["datasetVersion"]
    print(f"  version {version['version']} of data set wine: {version['uri']}")
    print(f"  sha256 {version['sha256']}, {version['rowCount']} rows, event {committed['eventId']}")

    if committed.get("created", False):
        print("\nWaiting for the trainer and the evaluator ...", flush=True)
        evaluation = asyncio.run(wait_for_evaluation(MODEL, started_ms))
        elapsed = time.monotonic() - started
        verdict = "passed" if evaluation.passed else "failed"
        print(
            f"  {MODEL} version {evaluation.version} trained and evaluated in {elapsed:.1f} s: gate {verdict}"
        )
        for name in sorted(evaluation.metrics):
            print(f"    {name:10s} {evaluation.metrics[name]:.4f}")
        for gate in evaluation.gates:
            print(f"    gate {gate.gate}: {'ok' if gate.passed else 'FAILED'} - {gate.message}")
        mlops("models", "show", f"{MODEL}@{evaluation.version}")
    else:
        print("\nThis data set version was committed before: nothing new to train. The model as it stands:")
        mlops("models", "list", MODEL)

    trace_id = committed["traceId"]
    deadline = time.monotonic() + 30
    spans = []
    # The trace is complete once the evaluator's spans have arrived (or, for a repeat, the registry's).
    wanted = "mlops-evaluator" if committed.get("created", False) else "mlops-registry"
    while time.monotonic() < deadline:
        spans = jaeger.trace(trace_id)
        if any(s.service == wanted for s in spans):
            break
        time.sleep(0.5)
    services = sorted({s.service for s in spans})
    print(f"\nTrace {trace_id}: {len(spans)} spans across {', '.join(services)}")
    print(
        render_tree([s for s in spans if not s.is_sql], repeats=3)
        or "  (no spans: is OTEL_EXPORTER_OTLP_ENDPOINT set?)"
    )
    print("  (SQL statements left out of the tree; Jaeger shows them)")
    print(f"\nJaeger UI:  {jaeger.ui_url(trace_id)}")
    print(f"Jaeger API: {jaeger.base_url}/api/v3/traces/{trace_id}")
    print("\nTry next:")
    print(f"  mlops models lineage {MODEL}@1      mlops runs list --model {MODEL}")
    print(f"  mlops alias set {MODEL} production 1 --reason 'first release'")
    print("  make test                         make bench")
    jaeger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
