"""ModelStreamInfer against the real stack: requests pipelined over one stream are answered in the
order they came, on the same path as ModelInfer; a failed one is answered with `error_message` and
the stream goes on. The client is an unmodified tritonclient.grpc (`start_stream`,
`async_stream_infer`), and the platform's own stub for the failures tritonclient cannot send."""

# The fixtures imported from inference_helpers reach the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import numpy as np
import pytest

from inference import grpc_service_pb2 as oip
from tests.integration.inference_helpers import (  # noqa: F401 - shared fixtures and helpers
    TritonClient,
    harness,
    models,
    name,
    probabilities,
    request,
    sample,
    state,
    topics_bus,
    triton_script,
    version,
)
from tests.integration.triton_scripts import TRITON_STREAM_CLIENT, triton_extra_script


@pytest.fixture(scope="module")
async def streams(harness, tmp_path_factory):
    """tritonclient.grpc's streaming API, with the operator's certificate (mutual TLS)."""
    script = triton_extra_script(tmp_path_factory, TRITON_STREAM_CLIENT, "triton_stream")
    client = await TritonClient.start(harness.address, script)
    yield client
    await client.close()


async def test_tritonclient_pipelines_a_stream_and_reads_answers_in_order(harness, models, streams):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 1), batch=16, wait_us=2_000))
    rows = trained.rows[:20]
    calls = [{"model": model, "rows": rows[i : i + 1].tolist(), "id": f"s{i}"} for i in range(20)]
    calls[7]["model"] = "no-such-model"
    calls[12]["version"] = "9"
    reply = await streams.call(requests=calls)
    answers = reply["answers"]
    assert len(answers) == 20
    expected = trained.expected(rows)["probabilities"]
    for i, answer in enumerate(answers):
        if i == 7:
            assert not answer["ok"] and "'no-such-model' is not served here" in answer["message"], answer
        elif i == 12:
            assert not answer["ok"] and "no version '9'" in answer["message"], answer
        else:
            assert answer["ok"] and answer["id"] == f"s{i}" and answer["version"] == "1", answer
            np.testing.assert_allclose(answer["probabilities"], expected[i : i + 1], rtol=1e-5, atol=1e-6)
    assert sample("mlops_inference_requests_total", model=model, version="1", code="OK") == 18
    assert sample("mlops_inference_requests_total", model=model, version="", code="NOT_FOUND") == 1


async def test_a_failed_request_is_answered_with_its_message_and_the_stream_goes_on(harness, models):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 1)))
    rows = trained.rows[:3]
    narrow = request(model, rows[:1, :5], request_id="narrow")
    narrow.inputs[0].shape[:] = [1, 5]
    sent = [
        request(model, rows[:1], request_id="first"),
        narrow,
        oip.ModelInferRequest(model_name=model, id="empty"),
        request(model, rows[1:3], request_id="last"),
    ]

    async def requests():
        for message in sent:
            yield message

    answers = [answer async for answer in harness.stub.ModelStreamInfer(requests(), timeout=30)]
    assert [a.infer_response.id for a in answers] == ["first", "narrow", "empty", "last"]
    assert not answers[0].error_message and not answers[3].error_message
    assert "input 'input' has shape [1, 5]" in answers[1].error_message
    assert "no inputs" in answers[2].error_message
    expected = trained.expected(rows)["probabilities"]
    np.testing.assert_allclose(probabilities(answers[0].infer_response), expected[:1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities(answers[3].infer_response), expected[1:3], rtol=1e-5, atol=1e-6)
    assert sample("mlops_inference_requests_total", model=model, version="1", code="INVALID_ARGUMENT") == 2


async def test_a_stream_of_many_requests_keeps_its_order(harness, models):
    """More requests than the server serves at once (its window): reading waits, nothing is reordered."""
    model = name()
    trained = models.wine_b
    await harness.serve(state(model, 1, version(trained, 1), batch=32, wait_us=500))
    count = 300
    rows = np.tile(trained.rows, (5, 1))[:count]

    async def requests():
        for i in range(count):
            yield request(model, rows[i : i + 1], request_id=str(i))

    answers = [answer async for answer in harness.stub.ModelStreamInfer(requests(), timeout=60)]
    assert [a.infer_response.id for a in answers] == [str(i) for i in range(count)]
    got = np.concatenate([probabilities(a.infer_response) for a in answers])
    np.testing.assert_allclose(got, trained.expected(rows)["probabilities"], rtol=1e-5, atol=1e-6)
