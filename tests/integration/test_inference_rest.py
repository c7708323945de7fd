"""The Open Inference Protocol over HTTP/REST (KServe V2) against the real stack: an unmodified
`tritonclient.http` and curl, JSON and binary tensors, errors with their HTTP status, bearer tokens,
the bound on a request's size, and the same metrics and inference log as gRPC.

The server runs in-process (inference_helpers' harness), secured as the stack secures it: TLS with a
certificate of the stack's CA, and every call but health authorised by a bearer token.
"""

# The fixtures imported from inference_helpers reach the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from opentelemetry import trace

from mlops.event_catalog import spec_for
from mlops.events.v1 import monitoring_pb2
from mlops.settings import GrpcClientSettings
from mlops.store import open_store
from services.inference.app import InferenceApp
from tests.integration.bus_helpers import raw_reader
from tests.integration.conftest import eventually, jaeger_trace
from tests.integration.inference_helpers import (  # noqa: F401 - shared fixtures and helpers
    TritonClient,
    _records,
    harness,
    models,
    name,
    sample,
    server_settings,
    state,
    topics_bus,
    triton_script,
    version,
)
from tests.integration.triton_scripts import TRITON_HTTP_CLIENT, operator_token, triton_extra_script


@pytest.fixture(scope="module")
async def rest(harness, tmp_path_factory):
    """tritonclient.http over TLS with a viewer's bearer token."""
    script = triton_extra_script(tmp_path_factory, TRITON_HTTP_CLIENT, "triton_http")
    client = await TritonClient.start(f"127.0.0.1:{harness.app.http_port}", script, token=operator_token())
    yield client
    await client.close()


class Curl:
    """curl over TLS; the token goes in a header file (never on the command line)."""

    def __init__(self, port: int, folder: Path) -> None:
        self.base = f"https://127.0.0.1:{port}"
        self.folder = folder
        self.ca = str(GrpcClientSettings().ca_file)
        self.headers: dict[str | None, Path] = {}
        for label, token in (("viewer", operator_token()), ("forged", "not-a-token-anyone-issued")):
            path = folder / f"{label}.headers"
            path.write_text(f"Authorization: Bearer {token}\n")
            os.chmod(path, 0o600)
            self.headers[label] = path

    async def __call__(
        self, verb: str, path: str, body: bytes | None = None, *, who: str | None = "viewer", headers=()
    ) -> tuple[int, dict[str, str], bytes]:
        out = self.folder / "response"
        argv = ["curl", "-sS", "--cacert", self.ca, "-X", verb, "-o", str(out), "-D", "-", "-w", ""]
        if who is not None:
            argv += ["-H", f"@{self.headers[who]}"]
        for header in headers:
            argv += ["-H", header]
        if body is not None:
            payload = self.folder / "body"
            payload.write_bytes(body)
            argv += ["--data-binary", f"@{payload}"]
        process = await asyncio.create_subprocess_exec(
            *argv, self.base + path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        head, error = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, error.decode()
        lines = head.decode("latin-1").splitlines()
        status = int(lines[0].split()[1])
        fields = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:]) if v
        }
        return status, fields, out.read_bytes()


def _tensor(rows: np.ndarray, *, nested: bool = True) -> dict:
    data = rows.tolist() if nested else rows.reshape(-1).tolist()
    return {"name": "input", "datatype": "FP32", "shape": list(rows.shape), "data": data}


async def test_tritonclient_http_infers_with_binary_and_json_tensors(harness, models, rest):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 1)))
    rows = trained.rows[:4]
    expected = trained.expected(rows)
    labels = [trained.class_labels[i] for i in expected["label"]]
    for binary_in in (True, False):
        for binary_out in (True, False):
            answer = await rest.call(
                op="infer",
                model=model,
                id=f"rest-{binary_in}-{binary_out}",
                inputs=[{**_tensor(rows), "binary": binary_in}],
                outputs=[
                    {"name": "probabilities", "binary": binary_out},
                    {"name": "label", "binary": binary_out},
                ],
            )
            assert answer["ok"], answer
            assert answer["version"] == "1" and answer["id"] == f"rest-{binary_in}-{binary_out}"
            assert answer["binary"] == {"probabilities": binary_out, "label": binary_out}
            probabilities = answer["outputs"]["probabilities"]
            assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [4, 3]
            np.testing.assert_allclose(probabilities["data"], expected["probabilities"], rtol=1e-5, atol=1e-6)
            assert answer["outputs"]["label"]["data"] == labels
    # no outputs named: all of them, in binary (tritonclient asks with binary_data_output)
    answer = await rest.call(op="infer", model=model, version="1", inputs=[_tensor(rows[:1])])
    assert answer["ok"] and set(answer["outputs"]) == {"probabilities", "label"}, answer
    assert all(answer["binary"].values())


async def test_tritonclient_http_reads_health_metadata_and_refusals(harness, models, rest):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 1)))
    server = await rest.call(op="server")
    assert server["ok"] and server["live"] and server["ready"], server
    assert server["metadata"]["name"] == "mlops-inference"
    metadata = await rest.call(op="metadata", model=model)
    assert metadata["ok"], metadata
    described = metadata["metadata"]
    assert described["name"] == model and described["versions"] == ["1"]
    assert described["inputs"][0]["name"] == "input" and described["inputs"][0]["shape"] == [-1, 13]
    assert json.loads(described["parameters"]["feature_names"]) == trained.feature_names
    assert (await rest.call(op="ready", model=model))["ready"] is True
    assert (await rest.call(op="ready", model=model, version="1"))["ready"] is True
    assert (await rest.call(op="ready", model=model, version="9"))["ready"] is False

    unknown = await rest.call(op="infer", model="no-such-model", inputs=[_tensor(trained.rows[:1])])
    assert unknown == {"ok": False, "status": "404", "message": unknown["message"]}
    assert "'no-such-model' is not served here" in unknown["message"]
    no_version = await rest.call(op="infer", model=model, version="7", inputs=[_tensor(trained.rows[:1])])
    assert no_version["status"] == "404" and "no version '7'" in no_version["message"], no_version
    narrow = trained.rows[:2, :5]
    shape = await rest.call(op="infer", model=model, inputs=[_tensor(narrow)])
    assert shape["status"] == "400" and "input 'input' has shape [2, 5]" in shape["message"], shape
    text = await rest.call(
        op="infer",
        model=model,
        inputs=[{"name": "input", "datatype": "BYTES", "shape": [1, 13], "data": ["x"] * 13}],
    )
    assert text["status"] == "400" and "BYTES" in text["message"], text
    wrong_output = await rest.call(
        op="infer", model=model, inputs=[_tensor(trained.rows[:1])], outputs=[{"name": "logits"}]
    )
    assert wrong_output["status"] == "400" and "unknown output 'logits'" in wrong_output["message"]
    still = await rest.call(op="infer", model=model, inputs=[_tensor(trained.rows[:1])])
    assert still["ok"], "the server keeps answering after refusals"


async def test_curl_json_tensors_errors_and_tokens(harness, models, tmp_path):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 1)))
    curl = Curl(harness.app.http_port, tmp_path)
    rows = trained.rows[:2]
    expected = trained.expected(rows)
    infer = f"/v2/models/{model}/infer"

    # health is open, as gRPC health is; everything else needs a token the server knows
    assert (await curl("GET", "/v2/health/live", who=None))[0] == 200
    status, _, body = await curl("GET", "/v2/health/ready", who=None)
    assert (status, json.loads(body)) == (200, {"ready": True})
    status, fields, body = await curl(
        "POST", infer, json.dumps({"inputs": [_tensor(rows)]}).encode(), who=None
    )
    assert status == 401 and "bearer token" in json.loads(body)["error"]
    assert fields["www-authenticate"].startswith("Bearer")
    status, _, body = await curl("GET", f"/v2/models/{model}", who="forged")
    assert status == 401 and "not known to this server" in json.loads(body)["error"]

    # JSON tensors, nested or flat; the answer is JSON
    for nested in (True, False):
        document = {"id": f"curl-{nested}", "inputs": [_tensor(rows, nested=nested)]}
        status, fields, body = await curl("POST", infer, json.dumps(document).encode())
        assert status == 200 and fields["content-type"] == "application/json", body
        answer = json.loads(body)
        assert (
            answer["model_name"] == model
            and answer["model_version"] == "1"
            and answer["id"] == f"curl-{nested}"
        )
        outputs = {o["name"]: o for o in answer["outputs"]}
        np.testing.assert_allclose(
            outputs["probabilities"]["data"], expected["probabilities"].reshape(-1), rtol=1e-5
        )
        assert outputs["label"]["data"] == [trained.class_labels[i] for i in expected["label"]]

    # one tensor per feature, named after it, as gRPC takes them
    columns = [
        {"name": feature, "datatype": "FP64", "shape": [2], "data": rows[:, i].astype(float).tolist()}
        for i, feature in enumerate(trained.feature_names)
    ]
    status, _, body = await curl("POST", infer, json.dumps({"inputs": columns}).encode())
    assert status == 200, body
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    np.testing.assert_allclose(
        outputs["probabilities"]["data"], expected["probabilities"].reshape(-1), rtol=1e-5
    )

    # the binary tensor extension, written by hand: a JSON header, then the tensor's bytes
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [2, 13],
                    "parameters": {"binary_data_size": 104},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    status, fields, body = await curl(
        "POST",
        f"/v2/models/{model}/versions/1/infer",
        header + rows.astype("<f4").tobytes(),
        headers=[f"Inference-Header-Content-Length: {len(header)}", "Content-Type: application/octet-stream"],
    )
    assert status == 200, body
    length = int(fields["inference-header-content-length"])
    described = json.loads(body[:length])["outputs"][0]
    assert described["parameters"] == {"binary_data_size": 24}
    np.testing.assert_allclose(
        np.frombuffer(body[length:], "<f4").reshape(2, 3), expected["probabilities"], rtol=1e-5
    )

    # errors name the problem, with their HTTP status
    cases = [
        ("POST", infer, b"{not json", 400, "not JSON"),
        ("POST", infer, json.dumps({"inputs": []}).encode(), 400, 'no "inputs"'),
        (
            "POST",
            infer,
            json.dumps({"inputs": [{**_tensor(rows), "shape": [3, 13]}]}).encode(),
            400,
            "needs 39",
        ),
        (
            "POST",
            infer,
            json.dumps({"inputs": [{**_tensor(rows), "data": [["a"] * 13] * 2}]}).encode(),
            400,
            "not FP32",
        ),
        (
            "POST",
            f"/v2/models/{model}/versions/4/infer",
            json.dumps({"inputs": [_tensor(rows)]}).encode(),
            404,
            "no version '4'",
        ),
        ("GET", infer, None, 405, "use POST"),
        ("GET", "/v2/models/no-such-model", None, 404, "not served here"),
        ("GET", "/v1/models", None, 404, "under /v2"),
    ]
    for verb, path, body_sent, code, words in cases:
        status, _, body = await curl(verb, path, body_sent)
        assert status == code and words in json.loads(body)["error"], (path, status, body)
    status, _, body = await curl("GET", f"/v2/models/{model}/ready")
    assert (status, json.loads(body)) == (200, {"name": model, "ready": True})
    status, _, body = await curl("GET", "/v2")
    assert status == 200 and json.loads(body)["name"] == "mlops-inference"
    status, _, body = await curl("POST", "/v2/repository/index", b"{}")
    assert status == 200 and {
        "name": model,
        "version": "1",
        "state": "READY",
        "reason": "production",
    } in json.loads(body)


async def test_rest_requests_are_counted_and_logged_as_grpc_ones_are(kafka, harness, models, tmp_path):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 1)))
    curl = Curl(harness.app.http_port, tmp_path)
    topic = harness.bus.topic_prefix + spec_for(monitoring_pb2.InferenceLogged).topic
    rows = trained.rows[:2]
    async with raw_reader(kafka, topic) as reader:
        ok = json.dumps({"id": "rest-logged", "inputs": [_tensor(rows)]}).encode()
        assert (await curl("POST", f"/v2/models/{model}/infer", ok))[0] == 200
        bad = json.dumps({"id": "rest-bad", "inputs": [_tensor(trained.rows[:1, :4])]}).encode()
        assert (await curl("POST", f"/v2/models/{model}/infer", bad))[0] == 400
        records = await _records(reader, model, want=lambda seen: len(seen) >= 3)
    by_id = {record.request_id: record for record in records}
    np.testing.assert_allclose(by_id["rest-logged/1"].features, rows[1], rtol=1e-6)
    assert "INVALID_ARGUMENT" in by_id["rest-bad"].error
    assert sample("mlops_inference_requests_total", model=model, version="1", code="OK") == 1
    assert sample("mlops_inference_requests_total", model=model, version="1", code="INVALID_ARGUMENT") == 1


async def test_request_size_is_bounded(kafka, topics_bus, artifact_settings, harness, models, tmp_path):
    app = InferenceApp(
        server_settings(http_max_body_bytes=4_096, max_request_rows=8, log_enabled=False),
        kafka=kafka,
        bus=topics_bus,
        store=open_store(artifact_settings),
    )
    model = name()
    trained = models.wine_a
    await harness.publish(state(model, 1, version(trained, 1)))
    await app.start(ready_timeout_s=60)
    try:
        await eventually(lambda: app.core.generation(model) == 1, what="model served")
        curl = Curl(app.http_port, tmp_path)
        path = f"/v2/models/{model}/infer"
        big = json.dumps({"inputs": [_tensor(np.tile(trained.rows, (2, 1)))]}).encode()
        assert len(big) > 4_096
        status, _, body = await curl("POST", path, big)
        assert status == 413 and "at most 4096" in json.loads(body)["error"], body
        many = json.dumps({"inputs": [_tensor(trained.rows[:9].round(1))]}).encode()
        assert len(many) < 4_096
        status, _, body = await curl("POST", path, many)
        assert status == 413 and "at most 8" in json.loads(body)["error"], body
        status, _, body = await curl(
            "POST", path, json.dumps({"inputs": [_tensor(trained.rows[:8].round(1))]}).encode()
        )
        assert status == 200, body
    finally:
        await app.stop()


async def test_a_rest_request_continues_the_callers_trace(harness, models, tmp_path, jaeger_url):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 1)))
    curl = Curl(harness.app.http_port, tmp_path)
    client_trace = uuid.uuid4().hex
    body = json.dumps({"inputs": [_tensor(trained.rows[:1])]}).encode()
    status, _, answer = await curl(
        "POST",
        f"/v2/models/{model}/infer",
        body,
        headers=[f"traceparent: 00-{client_trace}-{uuid.uuid4().hex[:16]}-01"],
    )
    assert status == 200, answer
    trace.get_tracer_provider().force_flush()
    spans = await eventually(
        lambda: [s for s in jaeger_trace(jaeger_url, client_trace) or [] if s.name.endswith("/ModelInfer")],
        timeout_s=30,
        what="the REST request's span in Jaeger",
    )
    assert spans[0].attributes.get("mlops.model.name") == model
    assert str(spans[0].attributes.get("mlops.model.version")) == "1"
