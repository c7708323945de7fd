"""`make demo`: the platform at work on the local stack, through the same commands a user types.

1. `mlops apply -f wine-quality.yaml` declares the model to the registry.
2. `mlops data commit wine.csv --dataset wine` stores a seeded data set in S3 content-addressed,
   records the version over gRPC and publishes `DataCommitted` to Kafka.
3. The registry service consumes that event, reads the file back with its sha256 verified and
   confirms the version; `mlops data show wine` prints it.
4. The trace of the commit, across the CLI and the registry service, is read back from Jaeger's API
   and drawn as a tree.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlops.jaeger import JaegerClient, render_tree

SPEC = Path(__file__).with_name("wine-quality.yaml")
FEATURES = ["alcohol", "malic_acid", "ash", "magnesium", "flavanoids", "color_intensity", "hue", "proline"]
CENTRES = [
    [13.7, 2.0, 2.4, 106, 2.9, 5.5, 1.06, 1115],
    [12.3, 1.9, 2.2, 94, 2.1, 3.1, 1.06, 520],
    [13.1, 3.3, 2.4, 99, 0.8, 7.4, 0.68, 630],
]


def write_dataset(path: Path, rows: int = 600, seed: int = 7) -> None:
    """A seeded three-class tabular data set shaped like the classic wine data."""
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, "target"])
        for _ in range(rows):
            label = rng.randrange(3)
            writer.writerow([round(rng.gauss(c, abs(c) * 0.08), 3) for c in CENTRES[label]] + [label])


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
        committed = mlops(
            "data", "commit", str(data), "--dataset", "wine", "--label", "source=demo", json_output=True
        )
    assert isinstance(committed, dict)
    version = committed["datasetVersion"]
    print(f"  version {version['version']} of data set wine: {version['uri']}")
    print(f"  sha256 {version['sha256']}, {version['rowCount']} rows, event {committed['eventId']}")
    mlops("data", "show", f"wine@{version['version']}")

    trace_id = committed["traceId"]
    deadline = time.monotonic() + 30
    spans = []
    # The trace is complete once the registry service has handled the event and its spans arrived.
    while time.monotonic() < deadline:
        spans = jaeger.trace(trace_id)
        if any(s.service == "mlops-registry" and s.name.startswith("process ") for s in spans):
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    print(
        f"\nTrace {trace_id}: {len(spans)} spans across {sorted({s.service for s in spans})}"
        f" (commit to handled by the registry in {elapsed:.1f} s, trace export included)"
    )
    print(render_tree(spans) or "  (no spans: is OTEL_EXPORTER_OTLP_ENDPOINT set?)")
    print(f"\nJaeger UI:  {jaeger.ui_url(trace_id)}")
    print(f"Jaeger API: {jaeger.base_url}/api/v3/traces/{trace_id}")
    print("\nTry next:")
    print("  mlops models list                 mlops data list")
    print("  mlops alias history wine-quality  mlops --json data show wine")
    print("  make test                         make bench")
    jaeger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
