"""The console on the running stack (infra/local/services.sh starts it on 8080): every page as a
viewer and as an operator, with the demo's data; actions refused to viewers by the deployer's own
access table and carried out as operators; tokens never on a page or in the console's log."""

from __future__ import annotations

import pytest

from mlops.events.v1 import deployment_pb2
from tests.integration.conftest import eventually
from tests.integration.console_helpers import STACK, Demo, demo, pages, signed_in, token

# The first test may wait for the demo to run on a fresh stack (about two minutes, more under load).
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def data() -> Demo:
    return demo()


@pytest.mark.parametrize("person", ["viewer", "operator"])
def test_every_page_renders_the_demos_data(data: Demo, person: str) -> None:
    with signed_in(person) as console:
        for path, expected in pages(data).items():
            response = console.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text[-500:])
            for text in expected:
                assert text in response.text, (person, path, text)
            assert token(person) not in response.text
            assert f'id="role">{person}<' in response.text, (path, "the page says who is signed in")


def test_a_page_without_a_session_sends_to_sign_in_and_a_bad_token_is_refused() -> None:
    with signed_in("viewer") as console:
        console.cookies.clear()
        assert console.get("/rollouts", follow_redirects=False).headers["location"] == "/login"
        refused = console.get("/login", params={"token": "not-a-token-of-this-stack"})
        assert refused.status_code == 401 and "not accepted" in refused.text


def _csrf(page: str) -> str:
    return page.split('name="csrf" value="')[1].split('"')[0]


def test_a_viewer_is_refused_every_rollout_action_and_nothing_changes(data: Demo) -> None:
    path = f"/rollouts/{data.model}/{data.rollout_id}"
    with signed_in("viewer") as console:
        page = console.get(path).text
        for action in ("pause", "resume", "promote", "rollback"):
            answer = console.post(f"{path}/{action}", data={"csrf": _csrf(page)})
            assert answer.status_code == 200
            assert "refused" in answer.text and "needs operator" in answer.text, (action, answer.text[-800:])
        assert deployment_pb2.RolloutState.Name(data.rollout_state) == deployment_pb2.RolloutState.Name(
            demo().rollout_state
        )
        forged = console.post(f"{path}/pause", data={"csrf": "forged"})
        assert forged.status_code == 403


def test_an_operator_acts_through_the_deployer(data: Demo) -> None:
    """The operator's move reaches the deployer as the operator: it is judged on the rollout's state
    (a finished rollout cannot be resumed), never refused for the role."""
    path = f"/rollouts/{data.model}/{data.rollout_id}"
    with signed_in("operator") as console:
        page = console.get(path).text
        answer = console.post(f"{path}/resume", data={"csrf": _csrf(page)})
        assert answer.status_code == 200
        assert "needs operator" not in answer.text
        assert "Resume done" in answer.text or "Resume refused" in answer.text, answer.text[-800:]


def test_dead_letter_replay_is_refused_to_viewers(data: Demo) -> None:
    with signed_in("viewer") as console:
        # the session's CSRF token, from a page that always has a form
        csrf = _csrf(console.get(f"/rollouts/{data.model}/{data.rollout_id}").text)
        answer = console.post("/dead-letters/mlops.model.trained.dlq/0-0/replay", data={"csrf": csrf})
        assert answer.status_code == 200
        assert "needs an operator" in answer.text or "reads no event topics" in answer.text


def test_tokens_never_reach_the_consoles_log() -> None:
    log = (STACK / "logs" / "console.log").read_text(errors="replace")
    assert "GET /login" in log, "the console logs requests (paths only)"
    for person in ("viewer", "operator", "admin"):
        assert token(person) not in log, person


async def test_the_feed_reads_a_dead_letter_and_replays_its_original_record(kafka, bus, unique) -> None:
    """On the tests' own topics (prefix `tests.`): a dead letter published with the bus's headers is
    read with its reason, and its replay puts the original key, value and headers back on its topic."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from mlops.bus import ensure_topics
    from services.console.feed import Feed

    topic = bus.topic_prefix + "mlops.model.trained"
    await ensure_topics(kafka, bus, [topic, topic + ".dlq"])
    key = f"replay-{unique}".encode()
    original = [("ce_type", b"mlops.model.trained.v1"), ("ce_id", key)]
    headers = [
        *original,
        ("mlops_dlq_reason", b"artifact sha256 mismatch"),
        ("mlops_dlq_topic", topic.encode()),
    ]
    producer = AIOKafkaProducer(**kafka.client_options())
    await producer.start()
    try:
        await producer.send_and_wait(topic + ".dlq", b"\x0a\x04wine", key=key, headers=headers)
    finally:
        await producer.stop()
    feed = Feed(kafka, bus, recent=50, dead_letters=1000, clients=2, replay_as=kafka)
    feed.start()
    try:
        letter = await eventually(
            lambda: next((d for d in feed.dead_letters().get(topic + ".dlq", []) if d.key == key), None),
            what="the dead letter read by the console",
        )
        assert letter.reason == "artifact sha256 mismatch" and letter.original_topic == topic
        reader = AIOKafkaConsumer(**kafka.client_options(), group_id=None, auto_offset_reset="latest")
        await reader.start()
        try:
            reader.subscribe([topic])
            await eventually(lambda: reader.assignment(), what="the reader's partitions")
            for partition in reader.assignment():
                await reader.position(partition)
            await feed.replay(letter)

            async def replayed():
                batch = await reader.getmany(timeout_ms=500)
                return next((r for records in batch.values() for r in records if r.key == key), None)

            record = await eventually(replayed, what="the replayed record on its topic")
        finally:
            await reader.stop()
        assert record.value == b"\x0a\x04wine"
        assert [(k, v) for k, v in record.headers] == original
    finally:
        await feed.stop()
