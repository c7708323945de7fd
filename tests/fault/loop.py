"""One turn of the loop for a fresh model, driven through the platform's public surfaces, and the
count of everything it made, so that a fault test can say "exactly once"."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sklearn.datasets import load_wine

from mlops.deployer.v1 import deployer_pb2, deployer_pb2_grpc
from mlops.events.v1 import deployment_pb2
from mlops.grpc import open_sync_channel
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from tests.fault.conftest import ROOT, wait_until

SPEC = """apiVersion: mlops/v1
kind: ModelSpec
metadata: {{name: {name}}}
spec:
  dataset: {dataset}
  task: classification
  label: target
  training: {{hidden_layers: [32], epochs: {epochs}, learning_rate: 0.01, batch_size: 32, seed: 7,
             early_stopping_patience: {epochs}}}
  gate: {{metric: accuracy, min: 0.5, max_regression: 1.0, max_p99_latency_ms: 1000}}
  rollout: {{strategy: direct}}
  monitor: {{on_drift: none}}
"""


def mlops(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "mlops.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"},
        timeout=300,
    )
    assert result.returncode == 0, f"mlops {' '.join(args)} exited {result.returncode}: {result.stderr}"
    return result


@dataclass
class Made:
    """What one model's turns of the loop left in the system of record and the deployer."""

    versions: list[int]
    runs: int
    evaluations: list[tuple[int, bool]]
    rollouts: list[tuple[int, int]]
    production: int | None

    def duplicates(self) -> list[str]:
        found = []
        if len(self.versions) != len(set(self.versions)) or self.versions != list(
            range(1, len(self.versions) + 1)
        ):
            found.append(f"versions {self.versions}")
        if self.runs != len(self.versions):
            found.append(f"{self.runs} runs for {len(self.versions)} versions")
        evaluated = [version for version, _ in self.evaluations]
        if sorted(evaluated) != sorted(set(evaluated)):
            found.append(f"evaluations {self.evaluations}")
        rolled = [version for version, _ in self.rollouts]
        if sorted(rolled) != sorted(set(rolled)):
            found.append(f"rollouts {self.rollouts}")
        return found


class Loop:
    """A fresh model trained on a fresh data set; every count is read back over gRPC."""

    def __init__(self, name: str, tmp: Path, *, epochs: int = 40) -> None:
        self.name = name
        self.dataset = name
        self.tmp = tmp
        self.epochs = epochs
        self.registry_channel = open_sync_channel("127.0.0.1:50051")
        self.deployer_channel = open_sync_channel("127.0.0.1:50052")
        self.registry = registry_pb2_grpc.RegistryStub(self.registry_channel)
        self.deployer = deployer_pb2_grpc.DeployerStub(self.deployer_channel)

    def close(self) -> None:
        self.registry_channel.close()
        self.deployer_channel.close()

    def declare(self) -> None:
        path = self.tmp / f"{self.name}.yaml"
        path.write_text(SPEC.format(name=self.name, dataset=self.dataset, epochs=self.epochs))
        mlops("apply", "-f", str(path))

    def commit(self, salt: int = 0) -> None:
        """A new snapshot of the wine data (rows shuffled by `salt`, so every salt is a new version)."""
        frame = load_wine(as_frame=True).frame.sample(frac=1.0, random_state=salt)
        path = self.tmp / f"{self.dataset}-{salt}.csv"
        frame.to_csv(path, index=False)
        mlops("data", "commit", str(path), "--dataset", self.dataset)

    def made(self) -> Made:
        versions = self.registry.ListModelVersions(pb.ListModelVersionsRequest(model=self.name), timeout=10)
        runs = self.registry.ListRuns(pb.ListRunsRequest(model=self.name), timeout=10)
        evaluations = self.registry.ListEvaluations(pb.ListEvaluationsRequest(model=self.name), timeout=10)
        rollouts = self.deployer.ListRollouts(deployer_pb2.ListRolloutsRequest(model=self.name), timeout=10)
        aliases = self.registry.ListAliases(pb.ListAliasesRequest(model=self.name), timeout=10)
        production = next((a.version for a in aliases.aliases if a.alias == "production"), None)
        return Made(
            versions=sorted(v.version for v in versions.model_versions),
            runs=len(runs.runs),
            evaluations=[(e.version, e.passed) for e in evaluations.evaluations],
            rollouts=[(r.candidate_version, r.state) for r in rollouts.rollouts],
            production=production,
        )

    def wait_in_production(self, version: int, *, timeout_s: float = 300) -> Made:
        seen: list[Made] = []

        def promoted():
            made = self.made()
            seen[:] = [made]
            done = any(
                v == version and state == deployment_pb2.ROLLOUT_STATE_PROMOTED for v, state in made.rollouts
            )
            return made if done and made.production == version else None

        try:
            return wait_until(promoted, timeout_s=timeout_s, what=f"{self.name} v{version} in production")
        except AssertionError as error:
            raise AssertionError(f"{error}; last seen: {seen[0] if seen else 'nothing'}") from None
