"""Drift computation against Evidently, and the monitor's sustained ingest through Kafka, in one run.

1. Drift over ROWS x 50 numeric features (PSI and KS per feature), on the same generated data:
   - the monitor's way: the reference profile of the reference rows (quantile bin edges and counts,
     `mlops.profile`), the current rows counted on those bins in batches as they would arrive
     (`Reference.count`), then PSI and the binned KS test per feature (`Reference.judge`);
   - Evidently 0.7.23's `DataDriftPreset`, once with `method="psi"` and once with `method="ks"`,
     in its own virtual environment (`tests/bench/setup.sh`).
   Each contender runs in a fresh process on the same `.npy` files; loading them is not timed.
   Untimed, per feature: the monitor's verdicts against Evidently's (PSI >= 0.1; KS p <= 0.05),
   and its statistics against `plain_statistics` on the profile's bins to 1e-6, the binned KS D
   beside the exact `scipy.stats.ks_2samp` of the raw values (which it never exceeds).
2. Ingest: BATCHES `InferenceLogged` records of 500 rows x 12 features are published in advance to
   topics of a `bench-<id>.` prefix; then a fresh process runs the monitor's ingest (decode, count,
   predictions and window state committed with the offsets in PostgreSQL) from the first offset,
   and the time from assignment until PostgreSQL holds the last offset of every partition is
   measured: with the predictions kept for the ground-truth join (the default) and without, each
   in a fresh process, rounds in alternating order, medians.

    python -m tests.bench.bench_drift [--rows N] [--batches N] [--rounds R] [--skip-evidently] [--skip-ingest]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FEATURES = 50
SEED = 11
PSI_THRESHOLD = 0.1
KS_ALPHA = 0.05
TOLERANCE = 1e-6
EVIDENTLY_VENV = Path(os.environ.get("MLOPS_CACHE", Path.home() / ".cache/mlops")) / "evidently-venv"
ROOT = Path(__file__).resolve().parents[2]


# --- 1. drift computation --------------------------------------------------------------------------


def generate(directory: Path, rows: int) -> None:
    """Reference rows from assorted distributions; current rows with a fifth of the features shifted."""
    rng = np.random.default_rng(SEED)
    reference, current = np.empty((rows, FEATURES)), np.empty((rows, FEATURES))
    for j in range(FEATURES):
        kind = j % 3
        for matrix, shift in ((reference, 0.0), (current, 0.3 if j % 5 == 0 else 0.0)):
            if kind == 0:
                matrix[:, j] = rng.normal(shift, 1.0, rows)
            elif kind == 1:
                matrix[:, j] = rng.exponential(1.0 + shift, rows)
            else:
                matrix[:, j] = rng.uniform(shift, 1.0 + shift, rows)
    np.save(directory / "reference.npy", reference)
    np.save(directory / "current.npy", current)


def run_monitor_drift(directory: Path) -> dict:
    from mlops.profile import ReferenceProfile
    from services.monitor.reference import Judgement, Reference

    reference = np.load(directory / "reference.npy")
    current = np.load(directory / "current.npy")
    names = [f"f{j}" for j in range(FEATURES)]
    started = time.perf_counter()
    profile = ReferenceProfile.compute(
        task="regression",
        features=reference,
        feature_names=names,
        categorical={},
        predictions=reference[:, 0],
    )
    compiled = Reference.of(profile, "0" * 64)
    profiled = time.perf_counter()
    counts = compiled.empty()
    batch = 10_000
    for start in range(0, len(current), batch):
        rows = current[start : start + batch]
        counts += compiled.count(rows, rows[:, 0])
    counted = time.perf_counter()
    psi = compiled.judge(counts, len(current), Judgement("psi", PSI_THRESHOLD, 1))
    ks = compiled.judge(counts, len(current), Judgement("ks", KS_ALPHA, 1, p_value_correction="none"))
    finished = time.perf_counter()
    edges = {f.name: f.edges.tolist() for f in compiled.features}
    return {
        "seconds": finished - started,
        "profile_seconds": profiled - started,
        "count_seconds": counted - profiled,
        "judge_seconds": finished - counted,
        "drifted_psi": sum(f.drifted for f in psi.features),
        "drifted_ks": sum(f.drifted for f in ks.features),
        "features": {  # edges, statistics and verdicts for the untimed checks
            p.feature: dict(edges=edges[p.feature], psi=p.score, psi_drifted=p.drifted, ks=k.score)
            | dict(ks_p_value=k.p_value, ks_drifted=k.drifted)
            for p, k in zip(psi.features, ks.features, strict=True)
        },
    }


def run_evidently_drift(directory: Path) -> dict:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    names = [f"f{j}" for j in range(FEATURES)]
    reference = pd.DataFrame(np.load(directory / "reference.npy"), columns=names)
    current = pd.DataFrame(np.load(directory / "current.npy"), columns=names)
    result: dict = {"seconds": 0.0}
    for method in ("psi", "ks"):
        started = time.perf_counter()
        definition = DataDefinition(numerical_columns=names)
        snapshot = Report([DataDriftPreset(method=method)]).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
        document = snapshot.dict()
        elapsed = time.perf_counter() - started
        result[f"{method}_seconds"] = elapsed
        result["seconds"] += elapsed
        counts = [m["value"] for m in document["metrics"] if isinstance(m.get("value"), dict)]
        if counts and "count" in counts[0]:
            result[f"drifted_{method}"] = int(counts[0]["count"])
        # one ValueDrift per column: the PSI itself, or the KS test's p-value
        result[method] = {
            m["config"]["column"]: float(m["value"])
            for m in document["metrics"]
            if m.get("config", {}).get("type", "").endswith(":ValueDrift")
        }
    return result


def plain_statistics(reference: np.ndarray, current: np.ndarray, edges: list[float]) -> dict:
    """PSI, binned KS D and its p-value of one column, recomputed plainly on the profile's bins."""
    from scipy import stats as sps

    from services.monitor.stats import PSI_EPSILON

    bins = [-np.inf, *edges[1:-1], np.inf]  # the end bins are open
    ref, cur = (np.histogram(v[~np.isnan(v)], bins=bins)[0].astype(float) for v in (reference, current))
    # PSI counts missing values as one more bin; KS compares the ordered bins only
    p, q = (np.append(c, np.isnan(v).sum()) for c, v in ((ref, reference), (cur, current)))
    p, q = np.maximum(p / p.sum(), PSI_EPSILON), np.maximum(q / q.sum(), PSI_EPSILON)
    n, m = ref.sum(), cur.sum()
    d = float(np.max(np.abs(np.cumsum(ref) / n - np.cumsum(cur) / m)))
    p_value = float(sps.kstwo.sf(d, np.round(n * m / (n + m))))
    return {"psi": float(np.sum((q - p) * np.log(q / p))), "ks": d, "ks_p_value": p_value}


def check(directory: Path, monitor: dict, evidently: dict | None) -> dict:
    """Per feature: the monitor's statistics against `plain_statistics` and the exact KS statistic
    of the raw values, and its verdicts against Evidently's."""
    from scipy import stats as sps

    reference, current = np.load(directory / "reference.npy"), np.load(directory / "current.npy")
    features: dict[str, dict] = {}
    for j in range(FEATURES):
        name, mine = f"f{j}", monitor[f"f{j}"]
        plain = plain_statistics(reference[:, j], current[:, j], mine.pop("edges"))
        exact = sps.ks_2samp(reference[:, j], current[:, j], method="asymp").statistic
        item = {**mine, **{f"{k}_plain": v for k, v in plain.items()}, "ks_exact": float(exact)}
        item["gaps"] = {k: abs(v - mine[k]) for k, v in plain.items()}
        if evidently is not None:
            item["evidently_psi"], item["evidently_ks_p_value"] = (
                evidently["psi"][name],
                evidently["ks"][name],
            )
            item["evidently_psi_drifted"] = evidently["psi"][name] >= PSI_THRESHOLD
            item["evidently_ks_drifted"] = evidently["ks"][name] <= KS_ALPHA
        features[name] = item
    gaps = {k: max(f["gaps"][k] for f in features.values()) for k in ("psi", "ks", "ks_p_value")}
    summary: dict = {
        "tolerance": TOLERANCE,
        "max_abs_difference_to_plain": gaps,
        "statistics_equal_plain": max(gaps.values()) <= TOLERANCE,
        "binned_ks_never_above_exact": all(f["ks"] <= f["ks_exact"] + 1e-12 for f in features.values()),
        "shifted_features": [f"f{j}" for j in range(FEATURES) if j % 5 == 0],
    }
    if evidently is not None:
        for method in ("psi", "ks"):
            summary[f"{method}_verdicts_differ"] = [
                name
                for name, f in features.items()
                if f[f"{method}_drifted"] != f[f"evidently_{method}_drifted"]
            ]
        summary["verdicts_equal_evidently"] = not (
            summary["psi_verdicts_differ"] or summary["ks_verdicts_differ"]
        )
    return {**summary, "features": features}


def contender(kind: str, directory: Path) -> dict:
    python = str(EVIDENTLY_VENV / "bin/python") if kind == "evidently" else sys.executable
    output = subprocess.run(
        [python, str(Path(__file__).resolve()), "--one", kind, "--data", str(directory)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'libs'}"},
        capture_output=True,
        text=True,
    )
    if output.returncode:
        raise RuntimeError(f"{kind} failed:\n{output.stderr[-4000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


# --- 2. ingest -------------------------------------------------------------------------------------

INGEST_FEATURES = [f"x{j}" for j in range(12)]
ROWS_PER_BATCH = 500


async def prepare_ingest(prefix: str, batches: int) -> str:
    """A model with a profile in the registry, and `batches` logged batches on the prefixed topic."""
    import asyncio
    import uuid

    from google.protobuf.timestamp_pb2 import Timestamp

    from mlops.bus import EventPublisher, ensure_topics
    from mlops.bus.admin import with_dead_letters
    from mlops.bus.producer import deferred_deliveries
    from mlops.events.v1 import monitoring_pb2
    from mlops.grpc import open_channel
    from mlops.profile import ReferenceProfile
    from mlops.registry.v1 import registry_pb2 as pb
    from mlops.registry.v1 import registry_pb2_grpc
    from mlops.settings import ArtifactSettings, BusSettings, KafkaSettings
    from mlops.store import open_store

    rng = np.random.default_rng(SEED)
    name = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    store = open_store(ArtifactSettings())
    training = rng.normal(size=(20_000, len(INGEST_FEATURES)))
    yes = 1 / (1 + np.exp(-training[:, 0]))
    probabilities = np.column_stack([1 - yes, yes])
    profile = ReferenceProfile.compute(
        task="classification",
        features=training,
        feature_names=INGEST_FEATURES,
        categorical={},
        predictions=probabilities,
        class_labels=["no", "yes"],
    )
    async with open_channel(os.environ.get("MLOPS_REGISTRY_ADDR", "127.0.0.1:50051")) as channel:
        registry = registry_pb2_grpc.RegistryStub(channel)
        data = await store.put_bytes(f"datasets/{name}", "data.csv", b"x0,target\n1,yes\n")
        dataset = await registry.RecordDatasetVersion(
            pb.RecordDatasetVersionRequest(dataset=name, uri=data.uri, sha256=data.sha256, format="csv")
        )
        body = pb.ModelSpecBody(dataset=name, task="classification", label="target")
        body.monitor.window_seconds = 30
        spec = pb.ModelSpec(
            api_version="mlops/v1", kind="ModelSpec", metadata=pb.ObjectMeta(name=name), spec=body
        )
        # versions are registered here by hand: the stack's trainer must not train this model too
        spec.spec.training.external = True
        applied = await registry.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec, applied_by="bench"))
        model = await store.put_bytes(f"models/{name}", "model.onnx", b"bench")
        profile_ref = await store.put_bytes(f"models/{name}", "profile.json", profile.to_json().encode())
        signature = pb.ModelSignature(
            feature_names=INGEST_FEATURES, class_labels=["no", "yes"], task="classification"
        )
        await registry.RegisterModelVersion(
            pb.RegisterModelVersionRequest(
                model=name,
                run_id=uuid.uuid4().hex,
                spec_version=applied.spec_version,
                dataset=name,
                dataset_version=dataset.dataset_version.version,
                dataset_sha256=dataset.dataset_version.sha256,
                artifact_uri=model.uri,
                artifact_sha256=model.sha256,
                profile_uri=profile_ref.uri,
                profile_sha256=profile_ref.sha256,
                signature=signature,
            )
        )
    kafka, bus = KafkaSettings(), BusSettings(topic_prefix=prefix)
    await ensure_topics(kafka, bus, with_dead_letters([prefix + "mlops.inference.logged"]))
    publisher = EventPublisher(kafka, bus, source="mlops-bench")
    await publisher.start()
    try:
        now = time.time()
        live = rng.normal(size=(ROWS_PER_BATCH * 8, len(INGEST_FEATURES)))
        with deferred_deliveries() as pending:
            for index in range(batches):
                batch = monitoring_pb2.InferenceLogged(
                    model=name, feature_names=INGEST_FEATURES, class_labels=["no", "yes"], sampling_rate=1.0
                )
                rows = live[(index % 8) * ROWS_PER_BATCH : (index % 8 + 1) * ROWS_PER_BATCH]
                stamp = Timestamp()
                stamp.FromNanoseconds(int((now + index * 0.01) * 1e9))
                for i, row in enumerate(rows):
                    p = float(1 / (1 + np.exp(-row[0])))
                    batch.records.add(
                        request_id=f"{index}-{i}",
                        version=1,
                        timestamp=stamp,
                        features=row.tolist(),
                        outputs=[1 - p, p],
                        label="yes" if p > 0.5 else "no",
                        latency_us=1500,
                    )
                await publisher.publish(batch)
                if len(pending) >= 200:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
    finally:
        await publisher.stop()
    return name


async def run_ingest(prefix: str, batches: int, store_predictions: bool) -> dict:
    """The monitor's ingest in this process, from the first offset to the committed last one."""
    import asyncio
    import uuid

    from sqlalchemy import text

    from mlops.bus import EventPublisher
    from mlops.db import Database, migrate
    from mlops.grpc import open_channel
    from mlops.outbox import Outbox
    from mlops.settings import ArtifactSettings, BusSettings, DatabaseSettings, KafkaSettings
    from mlops.store import open_store
    from services.monitor import prometheus
    from services.monitor.__main__ import MIGRATIONS
    from services.monitor.clients import ModelCatalog, RegistryClient
    from services.monitor.core import MonitorCore
    from services.monitor.ingest import InferenceLogIngest, inference_group
    from services.monitor.settings import MonitorSettings
    from services.monitor.tables import SCHEMA

    settings = MonitorSettings(
        metrics_port=None,
        consumer_group=f"bench-monitor-{uuid.uuid4().hex[:8]}",
        start_from="earliest",
        store_predictions=store_predictions,
    )
    kafka, bus = KafkaSettings(), BusSettings(topic_prefix=prefix)
    database = Database(DatabaseSettings())
    await migrate(database, MIGRATIONS, SCHEMA)
    store = open_store(ArtifactSettings())
    channel = open_channel(settings.registry_addr)
    registry = RegistryClient(channel)
    publisher = EventPublisher(kafka, bus, source="mlops-bench-monitor")
    await publisher.start()
    group = inference_group(settings)
    core = MonitorCore(
        database=database,
        outbox=Outbox(SCHEMA, source="mlops-bench-monitor", topic_prefix=prefix),
        catalog=ModelCatalog(registry, store, spec_ttl_s=60, unknown_ttl_s=5),
        registry=registry,
        store=store,
        settings=settings,
        consumer_group=group,
    )
    ingest = InferenceLogIngest(kafka, bus, core=core, publisher=publisher, settings=settings)
    await ingest.start()
    task = asyncio.create_task(ingest.run())
    await ingest.wait_assigned(60)
    started = time.perf_counter()
    query = text(f"SELECT coalesce(sum(next_offset), 0) FROM {SCHEMA}.offsets WHERE consumer_group = :g")
    while True:
        async with database.session() as session:
            committed = (await session.exec(query, params={"g": group})).one()[0]
        if committed >= batches:
            break
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    rows = sum(
        sample.value
        for metric in prometheus.ROWS_INGESTED.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )
    await ingest.stop()
    await task
    async with database.transaction() as session:
        await session.exec(
            text(
                f"WITH gone AS (DELETE FROM {SCHEMA}.prediction_batches WHERE model LIKE 'bench-ingest-%' "
                f"RETURNING id) DELETE FROM {SCHEMA}.prediction_requests WHERE batch_id BETWEEN "
                "(SELECT min(id) FROM gone) AND (SELECT max(id) FROM gone) AND batch_id IN (SELECT id FROM gone)"
            )
        )
        await session.exec(
            text(f"DELETE FROM {SCHEMA}.windows WHERE consumer_group = :g"), params={"g": group}
        )
        await session.exec(
            text(f"DELETE FROM {SCHEMA}.offsets WHERE consumer_group = :g"), params={"g": group}
        )
    await publisher.stop()
    await channel.close()
    await database.close()
    total = batches * ROWS_PER_BATCH
    return {"rows": total, "rows_counted": int(rows), "seconds": elapsed, "rows_per_s": total / elapsed}


def ingest_contender(prefix: str, batches: int, store_predictions: bool) -> dict:
    kind = "ingest" if store_predictions else "ingest-no-predictions"
    command = ["-m", "tests.bench.bench_drift", "--one", kind, "--prefix", prefix, "--batches", str(batches)]
    output = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
    if output.returncode:
        raise RuntimeError(f"ingest failed:\n{output.stderr[-4000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


# --- the run ---------------------------------------------------------------------------------------


def main(rows: int, batches: int, rounds: int, skip_evidently: bool, skip_ingest: bool = False) -> dict:
    import asyncio
    import uuid

    summary: dict = {"cores": os.cpu_count(), "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        directory = Path(tmp)
        generate(directory, rows)
        monitor = contender("monitor", directory)
        print(f"monitor drift: {monitor['seconds']:.2f} s", flush=True)
        drift: dict = {"rows": rows, "features": FEATURES, "monitor": monitor}
        evidently = contender("evidently", directory) if not skip_evidently else None
        if evidently is not None:
            print(f"Evidently drift: {evidently['seconds']:.2f} s", flush=True)
            drift["evidently"] = {k: v for k, v in evidently.items() if k not in ("psi", "ks")}
            # end to end (the monitor builds the reference profile), and as in service, where the
            # trainer built it: counting and judging only
            drift["speedup"] = evidently["seconds"] / monitor["seconds"]
            window = monitor["count_seconds"] + monitor["judge_seconds"]
            drift["speedup_profile_prebuilt"] = evidently["seconds"] / window
            print(f"speedup: {drift['speedup']:.1f}x end to end", flush=True)
        drift["checks"] = check(directory, monitor.pop("features"), evidently)
        print({k: drift["checks"].get(k) for k in ("statistics_equal_plain", "verdicts_equal_evidently")})
        summary["drift"] = drift
    if skip_ingest:
        return summary
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    asyncio.run(prepare_ingest(prefix, batches))
    runs: dict[str, list[dict]] = {"with_predictions": [], "without_predictions": []}
    for round_ in range(rounds):
        order = [True, False] if round_ % 2 == 0 else [False, True]  # neither always runs first
        for keep in order:
            result = ingest_contender(prefix, batches, keep)
            name = "with_predictions" if keep else "without_predictions"
            runs[name].append(result)
            print(f"round {round_ + 1}: ingest {name}: {result['rows_per_s']:,.0f} rows/s", flush=True)
    summary["ingest"] = {
        "rows_per_batch": ROWS_PER_BATCH,
        "features": len(INGEST_FEATURES),
        "rows_per_round": batches * ROWS_PER_BATCH,
        "rounds": rounds,
        "median_rows_per_s": {
            name: round(statistics.median(r["rows_per_s"] for r in results)) for name, results in runs.items()
        },
        "all_rounds": runs,
    }
    for name, value in summary["ingest"]["median_rows_per_s"].items():
        print(f"ingest {name}: median {value:,} rows/s", flush=True)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=1_000, help="InferenceLogged records of 500 rows")
    parser.add_argument("--rounds", type=int, default=3, help="ingest rounds per contender, alternating")
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true", help="drift only: no stack needed")
    parser.add_argument("--one", choices=["monitor", "evidently", "ingest", "ingest-no-predictions"])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--prefix")
    args = parser.parse_args()
    if args.one in ("monitor", "evidently"):
        result = run_monitor_drift(args.data) if args.one == "monitor" else run_evidently_drift(args.data)
        print(json.dumps(result))
        sys.exit(0)
    if args.one:
        import asyncio

        print(json.dumps(asyncio.run(run_ingest(args.prefix, args.batches, args.one == "ingest"))))
        sys.exit(0)
    summary = main(args.rows, args.batches, args.rounds, args.skip_evidently, args.skip_ingest)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "drift.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
