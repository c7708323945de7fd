"""Scripts for the unmodified Triton clients the REST and streaming tests drive (tritonclient.http,
tritonclient.grpc's stream API), run in tritonclient's own virtual environment as inference_helpers'
`TritonClient` runs its gRPC script: one JSON call per line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops.settings import GrpcClientSettings
from tests.integration.inference_helpers import TRITON_PYTHON

TRITON_HTTP_CLIENT = r"""
import json, os, sys
import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

# TLS as the platform serves it (the CA), and the bearer token the test gives (in the environment)
client = httpclient.InferenceServerClient(sys.argv[1], ssl=True, ssl_options={"ca_certs": os.environ["TRITON_CA"]})
AUTH = {"Authorization": "Bearer " + os.environ["TRITON_TOKEN"]} if os.environ.get("TRITON_TOKEN") else {}
DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "BYTES": np.object_}

def infer(call):
    inputs = []
    for spec in call["inputs"]:
        data = spec["data"]
        if spec["datatype"] == "BYTES":
            data = [value.encode() for value in data]
        array = np.array(data, dtype=DTYPES[spec["datatype"]]).reshape(spec["shape"])
        tensor = httpclient.InferInput(spec["name"], list(array.shape), spec["datatype"])
        tensor.set_data_from_numpy(array, binary_data=spec.get("binary", True))
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=o.get("binary", True))
               for o in call.get("outputs", [])] or None
    result = client.infer(call["model"], inputs, model_version=call.get("version", ""), outputs=outputs,
                          request_id=call.get("id", ""), headers={**AUTH, **(call.get("headers") or {})})
    response = result.get_response()
    answer = {"version": response["model_version"], "id": response.get("id", ""), "outputs": {},
              "binary": {o["name"]: "binary_data_size" in (o.get("parameters") or {}) for o in response["outputs"]}}
    for tensor in response["outputs"]:
        value = result.as_numpy(tensor["name"])
        # BYTES: bytes when they came binary, str when they came as JSON
        data = ([v.decode() if isinstance(v, bytes) else v for v in value.reshape(-1)]
                if value.dtype == np.object_ else value.tolist())
        answer["outputs"][tensor["name"]] = {"datatype": tensor["datatype"], "shape": list(tensor["shape"]), "data": data}
    return answer

for line in sys.stdin:
    call = json.loads(line)
    headers = {**AUTH, **(call.get("headers") or {})}
    try:
        if call["op"] == "infer":
            answer = infer(call)
        elif call["op"] == "metadata":
            answer = {"metadata": client.get_model_metadata(call["model"], call.get("version", ""), headers=headers)}
        elif call["op"] == "ready":
            answer = {"ready": client.is_model_ready(call["model"], call.get("version", ""), headers=headers)}
        elif call["op"] == "server":
            answer = {"live": client.is_server_live(headers=headers), "ready": client.is_server_ready(headers=headers),
                      "metadata": client.get_server_metadata(headers=headers)}
        answer["ok"] = True
    except InferenceServerException as error:
        answer = {"ok": False, "status": str(error.status()), "message": error.message()}
    print(json.dumps(answer), flush=True)
"""

TRITON_STREAM_CLIENT = r"""
import json, os, queue, sys
import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(
    sys.argv[1], ssl=True, root_certificates=os.environ["TRITON_CA"],
    private_key=os.environ.get("TRITON_KEY"), certificate_chain=os.environ.get("TRITON_CERT"),
)
AUTH = {"authorization": "Bearer " + os.environ["TRITON_TOKEN"]} if os.environ.get("TRITON_TOKEN") else {}

# One call per line: {"requests": [{"model", "rows", "id", "version"?}, ...]} sent pipelined over one stream;
# the answers come back in the order they arrived.
for line in sys.stdin:
    call = json.loads(line)
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=AUTH)
    for item in call["requests"]:
        rows = np.array(item["rows"], dtype=np.float32)
        tensor = grpcclient.InferInput(item.get("input", "input"), list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        client.async_stream_infer(item["model"], [tensor], model_version=item.get("version", ""), request_id=item["id"])
    out = []
    for _ in call["requests"]:
        result, error = answers.get(timeout=30)
        if error is not None:
            out.append({"ok": False, "message": error.message()})
        else:
            response = result.get_response()
            out.append({"ok": True, "id": response.id, "version": response.model_version,
                        "probabilities": result.as_numpy("probabilities").tolist()})
    client.stop_stream()
    print(json.dumps({"answers": out}), flush=True)
"""


def triton_extra_script(tmp_path_factory, source: str, stem: str) -> Path:
    """One of the scripts above written where the tritonclient subprocess can run it."""
    if not TRITON_PYTHON.exists():
        pytest.fail(
            f"tritonclient's virtual environment is missing ({TRITON_PYTHON}); run `bash tests/install-tritonclient.sh`",
            pytrace=False,
        )
    script = tmp_path_factory.mktemp(stem) / f"{stem}.py"
    script.write_text(source)
    return script


def operator_token(role: str = "viewer") -> str:
    """A person's bearer token the stack issued (`.stack/clients/<role>.token`)."""
    clients = GrpcClientSettings().ca_file.parent
    return (clients / f"{role}.token").read_text().strip()
