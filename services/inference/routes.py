"""What serves: the types a desired state is turned into, and how a model's routes split traffic.

Plain values, built by the core and read by the servicer; a routing table is replaced whole, never
changed in place (see `core`).
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

from services.inference.batching import Batcher
from services.inference.interface import Interface, build
from services.inference.runtime import LoadedModel

PRODUCTION, CANARY, SHADOW = "production", "canary", "shadow"


@dataclass(frozen=True)
class VersionSpec:
    """One version of a desired state."""

    version: int
    artifact_uri: str
    artifact_sha256: str
    traffic_percent: int
    role: str
    """production, canary or shadow."""
    task: str
    feature_names: tuple[str, ...]
    class_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelState:
    """What should serve for one model (a DesiredState record)."""

    model: str
    generation: int
    versions: tuple[VersionSpec, ...]
    max_batch_size: int = 0
    max_wait_us: int = 0


@dataclass
class Serving:
    """One version as it serves: its loaded model, its place in the desired state, its batcher."""

    model: str
    spec: VersionSpec
    loaded: LoadedModel
    categories: dict[str, tuple[str, ...]]
    batcher: Batcher
    interface: Interface | None = None
    """What it takes and answers (`interface.build`); built from the model and the spec when not given."""
    metrics: tuple | None = field(default=None, init=False, repr=False)
    """This version's request counter and latency histogram children, made on its first request."""
    version_text: str = field(init=False)
    feature_index: dict[str, int] = field(init=False)
    label_values: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.version_text = str(self.spec.version)
        self.feature_index = {name: i for i, name in enumerate(self.spec.feature_names)}
        self.label_values = self.spec.class_labels
        if self.interface is None:
            self.interface = build(self.loaded, self.spec)

    @property
    def key(self) -> tuple[int, str]:
        return self.spec.version, self.spec.artifact_sha256


class ModelRoutes:
    """The versions of one model and how requests without a version are split between them."""

    def __init__(self, state: ModelState, versions: list[Serving]) -> None:
        self.state = state
        self.by_version = {serving.version_text: serving for serving in versions}
        answering = [s for s in versions if s.spec.role != SHADOW and s.spec.traffic_percent > 0]
        self._answering = answering
        self._bounds: list[float] = []
        total = 0.0
        for serving in answering:
            total += serving.spec.traffic_percent
            self._bounds.append(total)
        self._total = total
        self.shadows = [s for s in versions if s.spec.role == SHADOW]
        production = [s for s in answering if s.spec.role == PRODUCTION]
        self.default = (production or answering or versions or [None])[0]

    def pick(self) -> Serving | None:
        """A version by traffic share (production and canaries), or None when none answers traffic."""
        if not self._answering:
            return None
        if len(self._answering) == 1:
            return self._answering[0]
        return self._answering[bisect.bisect_right(self._bounds, random.random() * self._total)]


@dataclass(frozen=True)
class Outcome:
    """What became of a desired state: applied, stale (an older generation) or refused, and why."""

    kind: str
    reason: str = ""
    error_type: str = ""


@dataclass(frozen=True)
class Target:
    """Where one request goes: the version that answers and the shadows that get a copy."""

    serving: Serving
    shadows: tuple[Serving, ...]
