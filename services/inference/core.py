"""The inference server's core: what serves, how a request is routed, batched, answered and logged.

Transport-neutral: the gRPC servicer and the desired-state reader convert their messages into the
types below and call this class; it knows nothing of gRPC or Kafka.

Hot swap. The routing table is a dict `model -> ModelRoutes` that is never changed in place: a new
desired state builds the new routes beside the old ones (loading and warming up only what is new)
and replaces the whole table in one assignment. A request routes and queues its rows without an
await in between, so it always runs on the routes it saw; versions that left the table keep their
session and finish what they were given, and nothing is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from opentelemetry import trace

from mlops.envelope import new_event_id
from mlops.errors import (
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    MlopsError,
    NotFound,
    Unavailable,
)
from mlops.outages import is_outage
from services.inference import interface as interfaces
from services.inference import prometheus
from services.inference.batching import Batcher, Outputs
from services.inference.routes import (  # noqa: F401 - the core's public types, where callers import them
    CANARY,
    PRODUCTION,
    SHADOW,
    ModelRoutes,
    ModelState,
    Outcome,
    Serving,
    Target,
    VersionSpec,
)
from services.inference.runtime import LoadedModel, Rows, ServingRuntime

log = logging.getLogger(__name__)
tracer = trace.get_tracer("services.inference")


class PredictionLog:
    """Where answered and failed requests are recorded (see `inference_log.InferenceLogger`)."""

    def sampled(self) -> bool:
        return False

    def record(
        self,
        serving: Serving,
        role: str,
        request_id: str,
        arrived_ns: int,
        rows: Rows | None,
        outputs: Outputs | None,
        latency_us: int,
        error: str = "",
    ) -> None:
        return None


ArtifactReader = Callable[[str, str], Awaitable[bytes]]
"""(uri, sha256) → verified bytes; raises IntegrityError on a mismatch."""
VersionConfirmer = Callable[[str, int, str], Awaitable[dict[str, tuple[str, ...]]]]
"""(model, version, sha256) → vocabularies of its text features, once the registry holds that sha256 for
the version; raises NotFound or IntegrityError when it does not (the state is refused), Unavailable while
the registry cannot be reached (waited out). The mapping may carry the registry's `signature` as an
attribute (`signatures.Categories`): its inputs' columns and outputs' roles then say how the graph is fed
and read."""


async def _no_categories(model: str, version: int, sha256: str) -> dict[str, tuple[str, ...]]:
    return {}


ARTIFACT_FAULTS = (IntegrityError, NotFound, InvalidArgument, FailedPrecondition)
"""Refusals that come from the artifact itself (missing, tampered, not a model): no replica can do better.
Anything else (no permission to read it, no memory to load it) is this replica's own fault: it is not
ready until the state is withdrawn or a later one loads."""


class InferenceCore:
    def __init__(
        self,
        *,
        runtime: ServingRuntime,
        read_artifact: ArtifactReader,
        executor: Executor,
        prediction_log: PredictionLog | None = None,
        confirm_version: VersionConfirmer = _no_categories,
        retry_s: float = 2.0,
        inline_below_us: int = 0,
        max_queued_requests: int = 1_000,
        max_shadow_calls: int = 256,
    ) -> None:
        """`inline_below_us`: calls of a version that take less than this run on the event loop (`Batcher`).
        `max_queued_requests`: requests one version may have waiting; `max_shadow_calls`: shadow calls in
        flight, past which a shadow's copy is shed (counted), never waited for."""
        self.runtime = runtime
        self.read_artifact = read_artifact
        self.executor = executor
        self.log = prediction_log or PredictionLog()
        self.confirm_version = confirm_version
        self.retry_s = retry_s
        self.inline_below_us = inline_below_us
        self.max_queued_requests = max_queued_requests
        self.max_shadow_calls = max_shadow_calls
        self.readiness_listener: Callable[[bool], None] | None = None
        """Called with the new readiness whenever it changes (the composition root sets gRPC health)."""
        self._ready = True
        self._caught_up = False
        self._table: dict[str, ModelRoutes] = {}
        self._generations: dict[str, int] = {}
        self._not_ready: dict[str, str] = {}
        self._refused: dict[str, str] = {}
        """Models whose every desired state so far was refused for its artifact, and why: callers are
        told so, but the replica stays ready (no replica could load them)."""
        """Models named by a desired state that serve nothing yet, and why."""
        self._background: set[asyncio.Task] = set()

    # --- what serves ------------------------------------------------------------------------

    @property
    def models(self) -> dict[str, ModelRoutes]:
        return self._table

    def generation(self, model: str) -> int | None:
        return self._generations.get(model)

    @property
    def ready(self) -> bool:
        """Able to answer what the desired state asks: every model it names serves a version (an older
        generation counts: it still answers, and a replica taken out of service for a refused new
        version would leave callers with none when every replica refuses it)."""
        return all(model in self._table for model in self._not_ready)

    def caught_up(self) -> None:
        """The desired state has been read to its end (and what it names loaded or refused)."""
        self._caught_up = True

    def server_ready(self) -> bool:
        """Whether the server as a whole is ready: the desired state read to its end, then `ready`."""
        return self._caught_up and self.ready

    def not_ready(self) -> dict[str, str]:
        """Models named by the desired state that answer nothing, and why."""
        return {model: reason for model, reason in self._not_ready.items() if model not in self._table}

    def _readiness_changed(self) -> None:
        ready = self.ready
        if ready != self._ready:
            self._ready = ready
            log.info("inference %s", "ready" if ready else f"not ready: {self.not_ready()}")
            if self.readiness_listener is not None:
                self.readiness_listener(ready)

    async def apply(self, state: ModelState) -> Outcome:
        """Serve `state` if its generation is newer: applied, stale or refused (the old routes stay).

        Only an outage of the artifact store is waited out; any other failure to load (a permanent
        store error, a checksum mismatch, bytes that are no model) refuses this state at once, so that
        the desired states behind it are not held up."""
        model = state.model
        current = self._generations.get(model)
        if current is not None and state.generation <= current:
            log.info("%s: generation %d ignored, generation %d serves", model, state.generation, current)
            return Outcome("stale")
        if model not in self._table:
            self._not_ready[model] = f"model {model!r} is loading (generation {state.generation})"
            self._readiness_changed()
        old = self._table.get(model)
        try:
            versions = [await self._serving_for(state, spec, old) for spec in state.versions]
        except Exception as error:
            message = error.message if isinstance(error, MlopsError) else f"{type(error).__name__}: {error}"
            prometheus.LOAD_FAILURES.labels(model, type(error).__name__).inc()
            log.error(
                "%s: desired state generation %d refused, the previous serving set stays: %s",
                model,
                state.generation,
                message,
            )
            if model not in self._table:
                if isinstance(error, ARTIFACT_FAULTS):
                    # Every replica would refuse these bytes: the state is dead-lettered, and taking this
                    # replica out of service would only take the models it does serve away as well.
                    self._not_ready.pop(model, None)
                    self._refused[model] = f"model {model!r} cannot be loaded: {message}"
                else:
                    self._not_ready[model] = f"model {model!r} cannot be loaded here: {message}"
                self._readiness_changed()
            span = trace.get_current_span()
            span.record_exception(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, message))
            return Outcome(
                "refused", f"generation {state.generation} refused: {message}", type(error).__name__
            )
        routes = ModelRoutes(state, versions)
        self._refused.pop(model, None)
        self._swap(model, routes)
        self._generations[model] = state.generation
        if not routes.by_version:
            self._not_ready[model] = f"model {model!r} serves no version (generation {state.generation})"
        elif routes.pick() is None:
            self._not_ready[model] = f"model {model!r} has no version answering traffic, only shadows"
        else:
            self._not_ready.pop(model, None)
        self._readiness_changed()
        log.info(
            "%s: generation %d serves %s",
            model,
            state.generation,
            ", ".join(f"v{s.spec.version} {s.spec.role} {s.spec.traffic_percent}%" for s in versions)
            or "nothing",
        )
        return Outcome("applied")

    def remove(self, model: str) -> None:
        """A tombstone: the model no longer serves."""
        if model in self._table:
            self._swap(model, None)
        self._generations.pop(model, None)
        self._not_ready.pop(model, None)
        self._refused.pop(model, None)
        prometheus.forget_model(model)
        self._readiness_changed()
        log.info("%s: no longer served", model)

    async def _serving_for(self, state: ModelState, spec: VersionSpec, old: ModelRoutes | None) -> Serving:
        existing = old.by_version.get(str(spec.version)) if old is not None else None
        if existing is not None and existing.spec.artifact_sha256 == spec.artifact_sha256:
            same_batching = (existing.batcher.max_batch_size, existing.batcher.max_wait_s) == (
                state.max_batch_size,
                max(state.max_wait_us, 0) / 1_000_000,
            )
            if same_batching and existing.spec == spec:
                return existing
            loaded, categories = existing.loaded, existing.categories
            interface = existing.interface if existing.spec == spec else None
            if interface is None:
                interface = interfaces.build(loaded, spec, getattr(categories, "signature", None))
        else:
            loaded, categories, interface = await self._load(state.model, spec)
        assert interface is not None
        return Serving(
            model=state.model,
            spec=spec,
            loaded=loaded,
            categories=categories,
            interface=interface,
            batcher=Batcher(
                interface.run(loaded),
                self.executor,
                max_batch_size=state.max_batch_size,
                max_wait_us=state.max_wait_us,
                observe_batch=self._batch_observer(state.model, str(spec.version)),
                inline_below_us=self.inline_below_us,
                estimated_call_s=loaded.call_s,
                max_pending=self.max_queued_requests,
                name=f"model {state.model!r} v{spec.version}",
            ),
        )

    async def _load(
        self, model: str, spec: VersionSpec
    ) -> tuple[LoadedModel, dict[str, tuple[str, ...]], interfaces.Interface]:
        """Verified bytes → a warmed-up model, under a span of its own (a child of the desired state's)."""
        with tracer.start_as_current_span(
            f"load {model} v{spec.version}",
            attributes={
                "mlops.model.name": model,
                "mlops.model.version": spec.version,
                "mlops.artifact.uri": spec.artifact_uri,
                "mlops.artifact.sha256": spec.artifact_sha256,
            },
        ) as span:
            started = time.perf_counter()
            while True:
                try:  # only bytes the registry holds for the version are loaded
                    categories = await self.confirm_version(model, spec.version, spec.artifact_sha256)
                    data = await self.read_artifact(spec.artifact_uri, spec.artifact_sha256)
                    break
                except Exception as error:
                    if not is_outage(error):
                        raise
                    log.warning(
                        "%s v%d: registry or store unavailable (%s); retrying", model, spec.version, error
                    )
                    await asyncio.sleep(self.retry_s)
            loaded, interface = await asyncio.to_thread(
                self._loaded, data, model, spec, getattr(categories, "signature", None)
            )
            span.set_attribute("mlops.inference.provider", loaded.provider)
            log.info(
                "%s v%d loaded on %s in %.0f ms (%d bytes)",
                model,
                spec.version,
                loaded.provider,
                (time.perf_counter() - started) * 1000,
                len(data),
            )
            return loaded, categories, interface

    def _loaded(
        self, data: bytes, model: str, spec: VersionSpec, signature
    ) -> tuple[LoadedModel, interfaces.Interface]:
        loaded = self.runtime.load(
            data,
            name=f"{model} v{spec.version}",
            task=spec.task,
            feature_count=len(spec.feature_names),
            class_count=len(spec.class_labels),
        )
        return loaded, interfaces.build(loaded, spec, signature)

    def _swap(self, model: str, routes: ModelRoutes | None) -> None:
        old = self._table.get(model)
        table = dict(self._table)
        if routes is None:
            table.pop(model, None)
        else:
            table[model] = routes
        self._table = table  # the one assignment every request sees either side of
        prometheus.SWAPS.labels(model).inc()
        kept = set(map(id, routes.by_version.values())) if routes is not None else set()
        served = routes.by_version if routes is not None else {}
        if old is not None:
            for serving in old.by_version.values():
                if id(serving) not in kept:
                    serving.batcher.close()
                    with contextlib.suppress(KeyError):
                        prometheus.TRAFFIC_PERCENT.remove(model, serving.version_text, serving.spec.role)
                if serving.version_text not in served:
                    prometheus.forget_version(model, serving.version_text)
        if routes is not None:
            for serving in routes.by_version.values():
                percent = 0 if serving.spec.role == SHADOW else serving.spec.traffic_percent
                prometheus.TRAFFIC_PERCENT.labels(model, serving.version_text, serving.spec.role).set(percent)
        prometheus.LOADED_MODELS.set(sum(len(r.by_version) for r in table.values()))

    def _batch_observer(self, model: str, version: str) -> Callable[[int], None]:
        return prometheus.BATCH_SIZE.labels(model, version).observe

    # --- requests -----------------------------------------------------------------------------

    def metric_model(self, model: str) -> str:
        """The `model` label for a request naming `model`: itself when the desired state names it,
        else one shared value, so that callers cannot add series by inventing names."""
        named = model in self._table or model in self._not_ready or model in self._refused
        return model if named else prometheus.UNKNOWN_MODEL

    def is_ready(self, model: str, version: str = "") -> bool:
        routes = self._table.get(model)
        if routes is None:
            return False
        if version:
            return version in routes.by_version
        return routes.pick() is not None

    def route(self, model: str, version: str = "") -> Target:
        """The version that answers (named, or by traffic share) and the shadows; raises NotFound or
        Unavailable naming the problem."""
        routes = self._table.get(model)
        if routes is None:
            raise self._not_served(model)
        if version:
            serving = routes.by_version.get(version)
            if serving is None:
                raise self._no_version(model, version, routes)
        else:
            serving = routes.pick()
            if serving is None:
                raise self._no_traffic(model)
        return Target(serving, tuple(s for s in routes.shadows if s is not serving))

    def metadata(self, model: str, version: str = "") -> tuple[Serving, list[str]]:
        """The version a metadata call describes (the one named, else the model's default) and every
        version loaded, in order; raises NotFound or Unavailable as `route` does."""
        routes = self._table.get(model)
        if routes is None:
            raise self._not_served(model)
        serving = routes.by_version.get(version) if version else routes.default
        if serving is None:
            raise self._no_version(model, version, routes) if version else self._no_traffic(model)
        return serving, sorted(routes.by_version, key=_version_order)

    def repository_index(self) -> list[tuple[str, str, str]]:
        """(model, version, role) of every version loaded, by model and version."""
        return [
            (model, version, serving.spec.role)
            for model, routes in sorted(self._table.items())
            for version, serving in sorted(routes.by_version.items())
        ]

    def _not_served(self, model: str) -> MlopsError:
        reason = self._not_ready.get(model) or self._refused.get(model)
        if reason is not None:
            return Unavailable(reason)
        served = ", ".join(sorted(self._table)) or "none"
        return NotFound(f"model {model!r} is not served here (served: {served})")

    @staticmethod
    def _no_version(model: str, version: str, routes: ModelRoutes) -> NotFound:
        loaded = ", ".join(sorted(routes.by_version, key=_version_order)) or "none"
        return NotFound(f"model {model!r} has no version {version!r} loaded (loaded: {loaded})")

    def _no_traffic(self, model: str) -> Unavailable:
        return Unavailable(self._not_ready.get(model) or f"model {model!r} answers no traffic")

    async def predict(self, target: Target, rows: Rows, *, request_id: str, arrived_ns: int) -> Outputs:
        """Answer with the target's version; shadows get a copy off the critical path. A logged request
        without an id gets one. `rows`: the graph's inputs as the transport decoded them for the target
        (`tensors.feed`); a shadow with other inputs gets them re-fed from the same columns."""
        serving = target.serving
        future = serving.batcher.submit(rows)
        sampled = self.log.sampled()
        if sampled and not request_id:
            request_id = new_event_id()
        for shadow in target.shadows:
            if len(self._background) >= self.max_shadow_calls:
                prometheus.SHADOW_SHED.labels(shadow.model).inc()
                continue
            self._in_background(
                self._shadow(shadow, rows, request_id, arrived_ns, sampled, serving.interface)  # type: ignore[arg-type]
            )
        outputs = await future
        if sampled:
            latency_us = (time.perf_counter_ns() - arrived_ns) // 1000
            self.log.record(serving, serving.spec.role, request_id, arrived_ns, rows, outputs, latency_us)
        return outputs

    def failed(self, target: Target, *, request_id: str, arrived_ns: int, error: str) -> None:
        """A request to a resolved version failed: logged, so that error rates reach the monitor."""
        if self.log.sampled():
            request_id = request_id or new_event_id()
            latency_us = (time.perf_counter_ns() - arrived_ns) // 1000
            serving = target.serving
            self.log.record(serving, serving.spec.role, request_id, arrived_ns, None, None, latency_us, error)

    async def _shadow(
        self,
        shadow: Serving,
        rows: Rows,
        request_id: str,
        arrived_ns: int,
        sampled: bool,
        source: interfaces.Interface,
    ) -> None:
        try:
            rows = shadow.interface.refeed(rows, source)  # type: ignore[union-attr]
            outputs = await shadow.batcher.submit(rows)
            error = ""
        except Exception as failure:
            outputs, error = None, f"{type(failure).__name__}: {failure}"
            log.warning("%s v%d (shadow) failed: %s", shadow.model, shadow.spec.version, error)
        if sampled:
            latency_us = (time.perf_counter_ns() - arrived_ns) // 1000
            self.log.record(
                shadow, SHADOW, request_id, arrived_ns, rows if outputs else None, outputs, latency_us, error
            )

    def _in_background(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for shadow calls still running (shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _version_order(text: str) -> tuple[int, str]:
    return (int(text), text) if text.isdigit() else (1 << 62, text)
