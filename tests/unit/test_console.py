"""The console's pages rendered from fake answers: no services, no network."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.message import Message
from starlette.testclient import TestClient

from mlops.deployer.v1 import deployer_pb2
from mlops.errors import InvalidArgument, NotFound, PermissionDenied
from mlops.events.v1 import common_pb2, deployment_pb2, evaluation_pb2, monitoring_pb2
from mlops.monitor.v1 import monitor_pb2
from mlops.registry.v1 import registry_pb2
from services.console import svg
from services.console.app import build_app
from services.console.feed import Feed
from services.console.settings import ConsoleSettings

TRACE = "0af7651916cd43dd8448eb211c80319c"
VIEWER, OPERATOR = "viewer-token-secret", "operator-token-secret"


def _version() -> registry_pb2.ModelVersion:
    return registry_pb2.ModelVersion(
        model="wine",
        version=2,
        dataset="wine",
        dataset_version=1,
        run_id="run-1",
        aliases=["production"],
        metrics={"accuracy": 0.91},
        tags={"trace.id": TRACE},
        signature=registry_pb2.ModelSignature(
            inputs=[registry_pb2.TensorSpec(name="input", datatype="FP32", shape=[-1, 2])],
            outputs=[registry_pb2.TensorSpec(name="label", datatype="BYTES", shape=[-1], role="label")],
            feature_names=["alcohol", "ph"],
            class_labels=["a", "b"],
            task="classification",
        ),
    )


def _rollout() -> deployer_pb2.Rollout:
    step = deployment_pb2.RolloutProgressed(
        rollout_id="r-1",
        model="wine",
        candidate_version=2,
        step_index=0,
        step_count=3,
        traffic_percent=10,
        state=deployment_pb2.ROLLOUT_STATE_PROGRESSING,
        candidate_health=common_pb2.HealthSnapshot(version=2, request_count=120, error_rate=0.0),
    )
    step.progressed_at.seconds = 1_800_000_010
    rollout = deployer_pb2.Rollout(
        rollout_id="r-1",
        model="wine",
        candidate_version=2,
        baseline_version=1,
        strategy="canary",
        state=deployment_pb2.ROLLOUT_STATE_PROGRESSING,
        steps=[10, 50, 100],
        traffic_percent=10,
        history=[step],
    )
    rollout.started_at.seconds = 1_800_000_000
    return rollout


class FakePlatform:
    """Answers by method name; the viewer is refused every action, as the services' tables would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def as_person(self, token: str):
        platform = self

        class Person:
            async def call(
                self, service: str, method: str, request: Message, *, cached: bool = True
            ) -> Message:
                platform.calls.append((token, service, method))
                return platform.answer(token, service, method, request)

        return Person()

    def answer(self, token: str, service: str, method: str, request: Message) -> Message:
        if token not in (VIEWER, OPERATOR):
            raise PermissionDenied("unknown token")
        if method in ("Pause", "Resume", "Promote", "Rollback"):
            if token == VIEWER:
                raise PermissionDenied(
                    f"user:viewer (viewer) may not call Deployer/{method}: it needs operator"
                )
            if not request.model:
                raise InvalidArgument("name a model or a rollout")
            return _rollout()
        version = _version()
        evaluation = registry_pb2.Evaluation(
            evaluation_id="e-1",
            model="wine",
            version=2,
            passed=True,
            gates=[evaluation_pb2.GateResult(gate="accuracy", passed=True, observed=0.91, threshold=0.85)],
            slices=[
                evaluation_pb2.SliceMetrics(
                    column="colour", value="red", row_count=10, metrics={"accuracy": 0.9}
                )
            ],
        )
        run = registry_pb2.Run(
            run_id="run-1",
            model="wine",
            model_version=2,
            params={"epochs": "3"},
            history=[registry_pb2.EpochMetrics(epoch=e, metrics={"val_loss": 1.0 / e}) for e in (1, 2, 3)],
        )
        window = monitor_pb2.DriftWindow(
            sample_count=50,
            prediction_drift_score=0.05,
            drifted=True,
            features=[
                monitoring_pb2.FeatureDrift(feature="alcohol", score=0.4, drifted=True),
                monitoring_pb2.FeatureDrift(feature="ph", score=0.01),
            ],
        )
        window.window.end.seconds = 1_800_000_030
        answers = {
            "ListModelSpecs": registry_pb2.ListModelSpecsResponse(
                specs=[registry_pb2.ModelSpecVersion(model="wine")]
            ),
            "ListAliases": registry_pb2.ListAliasesResponse(
                aliases=[registry_pb2.Alias(alias="production", version=2)]
            ),
            "ListRollouts": deployer_pb2.ListRolloutsResponse(rollouts=[_rollout()]),
            "GetRollout": _rollout(),
            "GetModelHealth": monitor_pb2.GetModelHealthResponse(
                versions=[common_pb2.HealthSnapshot(version=2, request_count=300, latency_p99_ms=4.2)]
            ),
            "ListModelVersions": registry_pb2.ListModelVersionsResponse(model_versions=[version]),
            "SearchModelVersions": registry_pb2.SearchModelVersionsResponse(model_versions=[version]),
            "GetModelVersion": version,
            "GetLineage": registry_pb2.GetLineageResponse(
                model_version=version,
                run=run,
                evaluations=[evaluation],
                dataset_version=registry_pb2.DatasetVersion(dataset="wine", version=1, row_count=100),
                alias_changes=[
                    registry_pb2.AliasChange(alias="production", to_version=2, actor="mlops-deployer")
                ],
            ),
            "GetAliasHistory": registry_pb2.GetAliasHistoryResponse(
                changes=[registry_pb2.AliasChange(alias="production", to_version=2, actor="mlops-deployer")]
            ),
            "ListRuns": registry_pb2.ListRunsResponse(runs=[run]),
            "GetRun": run,
            "GetDriftStatus": monitor_pb2.GetDriftStatusResponse(
                model="wine",
                versions=[
                    monitor_pb2.VersionDrift(
                        version=2,
                        method="psi",
                        threshold=0.2,
                        windows=[window],
                        live_metrics={"accuracy": 0.88},
                    )
                ],
            ),
        }
        if method not in answers:
            raise NotFound(f"no fake answer for {method}")
        return answers[method]


class FakeJaeger:
    base_url = "http://jaeger.invalid"

    def trace(self, trace_id: str):
        from mlops.jaeger import SpanView

        return [
            SpanView(
                trace_id, "a", None, "mlops data commit", "mlops-cli", "internal", 0, 9_000_000, False, {}
            ),
            SpanView(
                trace_id,
                "b",
                "a",
                "process mlops.model.trained",
                "mlops-evaluator",
                "consumer",
                1_000_000,
                5_000_000,
                True,
                {},
            ),
        ]


@pytest.fixture
def platform() -> FakePlatform:
    return FakePlatform()


def _client(platform: FakePlatform, token: str, feed: Feed | None = None) -> TestClient:
    settings = ConsoleSettings(jaeger_ui_url="http://jaeger-ui.invalid")
    client = TestClient(build_app(settings, platform.as_person, feed=feed, jaeger=FakeJaeger()))
    response = client.get(f"/login?token={token}", follow_redirects=False)
    assert response.status_code == 303, response.text
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    return client


PAGES = {
    "/": ["wine", "v2", "progressing"],
    "/models/wine": ["v2", "production"],
    "/models/wine/versions/2": [
        "accuracy",
        "pass",
        "colour",
        '<svg class="lineage"',
        "mlops-deployer",
        f"/traces/{TRACE}",
        "alcohol",
    ],
    "/runs?compare=run-1": ["run-1"[:5], "val_loss", "<polyline"],
    "/runs/run-1": ["epochs", "<polyline"],
    "/rollouts": ["r-1", "canary"],
    "/rollouts/wine/r-1": ["Promote", "10%", f"/traces/{TRACE}", "<polyline"],
    "/drift/wine": ["alcohol", '<svg class="heatmap"', "accuracy", "0.88"],
    "/traces": [TRACE],
    f"/traces/{TRACE}": [
        "mlops-evaluator",
        "process mlops.model.trained",
        "jaeger-ui.invalid/trace/",
        "error",
    ],
    "/live": ["reads no event topics"],
    "/dead-letters": ["reads no event topics"],
}


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_renders_for_a_viewer_without_the_token(platform: FakePlatform, path: str) -> None:
    client = _client(platform, VIEWER)
    response = client.get(path)
    assert response.status_code == 200, response.text
    for expected in PAGES[path]:
        assert expected in response.text, (path, expected)
    assert VIEWER not in response.text


def test_without_a_session_pages_send_people_to_sign_in(platform: FakePlatform) -> None:
    client = TestClient(build_app(ConsoleSettings(), platform.as_person))
    response = client.get("/models/wine", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert client.get("/login?token=wrong").status_code == 401


def test_a_viewer_is_refused_an_action_with_the_services_reason(platform: FakePlatform) -> None:
    client = _client(platform, VIEWER)
    page = client.get("/rollouts/wine/r-1").text
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    response = client.post("/rollouts/wine/r-1/pause", data={"csrf": csrf})
    assert response.status_code == 200
    assert "Pause refused" in response.text and "needs operator" in response.text
    assert "viewer" in response.text


def test_an_operator_acts_and_an_action_without_csrf_is_refused(platform: FakePlatform) -> None:
    client = _client(platform, OPERATOR)
    assert client.post("/rollouts/wine/r-1/pause", data={"csrf": "forged"}).status_code == 403
    page = client.get("/rollouts/wine/r-1").text
    assert 'id="role">operator<' in page
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    response = client.post("/rollouts/wine/r-1/pause", data={"csrf": csrf})
    assert "Pause done" in response.text
    assert (OPERATOR, "deployer", "Pause") in platform.calls


def _feed_with_a_dead_letter() -> Feed:
    feed = Feed(None, None, recent=5, dead_letters=2, clients=1)
    headers = [
        ("ce_type", b"mlops.model.trained.v1"),
        ("mlops_dlq_reason", b"artifact sha256 mismatch"),
        ("mlops_dlq_topic", b"mlops.model.trained"),
        ("mlops_dlq_time", b"2026-12-07T18:00:00Z"),
    ]
    feed.take("mlops.model.trained.dlq", 0, 7, b"wine", b"\x00", headers)
    return feed


def test_dead_letters_show_reasons_and_replay_is_for_operators(platform: FakePlatform) -> None:
    feed = _feed_with_a_dead_letter()
    replayed = []

    async def replay(letter) -> None:
        replayed.append(letter)

    feed.replay = replay  # the real one publishes to Kafka; tests/integration/test_console.py does that
    viewer = _client(platform, VIEWER, feed)
    page = viewer.get("/dead-letters").text
    assert "artifact sha256 mismatch" in page and "mlops.model.trained" in page
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    refused = viewer.post("/dead-letters/mlops.model.trained.dlq/0-7/replay", data={"csrf": csrf})
    assert "needs an operator" in refused.text and not replayed
    operator = _client(platform, OPERATOR, feed)
    csrf = operator.get("/dead-letters").text.split('name="csrf" value="')[1].split('"')[0]
    done = operator.post("/dead-letters/mlops.model.trained.dlq/0-7/replay", data={"csrf": csrf})
    assert "replayed 0-7" in done.text
    assert replayed[0].original_headers() == [("ce_type", b"mlops.model.trained.v1")]


def test_the_feed_is_bounded_in_events_letters_and_browsers() -> None:
    feed = _feed_with_a_dead_letter()
    for offset in range(8, 12):
        feed.take("mlops.model.trained.dlq", 0, offset, b"wine", b"", [("mlops_dlq_reason", b"r")])
    assert len(feed.dead_letters()["mlops.model.trained.dlq"]) == 2
    assert len(feed.recent(100)) == 5
    first = feed.listen()
    assert first is not None and feed.listen() is None
    for offset in range(100):
        feed.take("mlops.alias.changed", 0, offset, b"wine", b"", [])
    assert first.qsize() == 64


def test_charts_escape_names_and_mark_the_threshold() -> None:
    chart = svg.line_chart([svg.Series("<script>", [(1, 0.5), (2, 0.25)])], threshold=0.3)
    assert "<script>" not in chart and "&lt;script&gt;" in chart and 'class="threshold"' in chart
    heat = svg.heat_map(["f"], ["w1", "w2"], {("f", "w1"): 0.5}, threshold=0.2)
    assert 'class="cell over"' in heat and "not judged" in heat
    assert svg.heat_color(None, 0.2) == "#e5e7eb"


def test_the_read_cache_is_bounded_and_expires() -> None:
    from services.console.clients import ReadCache

    cache = ReadCache(ttl_s=60, entries=2)
    for index in range(3):
        cache.put(("who", index), registry_pb2.Run(run_id=str(index)))
    assert len(cache) == 2 and cache.get(("who", 0)) is None
    asyncio.run(asyncio.sleep(0))


def test_the_consoles_kafka_identity_reads_every_topic_and_writes_none() -> None:
    from mlops.bus import acl
    from services.console.feed import watched_topics

    granted = {(b.resource_name, b.operation) for b in acl.bindings_of(acl.CONSOLE)}
    events, dead = watched_topics()
    for topic in events + dead:
        assert (topic, "READ") in granted and (topic, "DESCRIBE") in granted, topic
    assert {operation for _, operation in granted} == {"READ", "DESCRIBE"}
    assert not [b for b in acl.bindings_of(acl.CONSOLE) if b.resource_type == "GROUP"]
