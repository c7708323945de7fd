"""The client installs alone: a fresh virtual environment, `pip install libs/mlops-client`, and it imports
and builds its messages with neither torch nor the platform's package present.

Here rather than in the unit tests: pip fetches grpcio and protobuf (from its cache when it can), which
takes half a minute or more on a busy machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import importlib.util, sys
import mlops_client
from mlops_client import protocol

assert importlib.util.find_spec("torch") is None, "torch is installed"
assert importlib.util.find_spec("mlops") is None, "the platform's package is importable"
assert mlops_client.__file__.startswith(sys.prefix), mlops_client.__file__  # the installed copy
run = protocol.new("CreateRunRequest", run_id="r", model="wine", params={"C": "1"}, source="client")
assert protocol.message_class("CreateRunRequest").FromString(run.SerializeToString()) == run
client = mlops_client.Client("127.0.0.1:1", max_attempts=1, timeout_s=2)
try:
    client.get_run("r")
except mlops_client.Unavailable as error:
    print("unavailable as expected:", error.message[:60])
try:
    mlops_client.to_onnx(type("LogisticRegression", (), {"__module__": "sklearn.linear_model"})())
except mlops_client.MissingExtra as error:
    print(error.message)
else:
    raise AssertionError("skl2onnx is installed")
print("ok", sorted(sys.modules.keys() & {"torch", "numpy", "mlops", "yaml"}))
"""


def test_installs_and_imports_alone_in_a_fresh_environment(tmp_path):
    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(environment)
    python = environment / "bin" / "python"
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "MLOPS_"))}
    clean["MLOPS_CONFIG"] = str(tmp_path / "no-config.yaml")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(ROOT / "libs" / "mlops-client")],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    checked = subprocess.run(
        [str(python), "-c", CHECK], capture_output=True, text=True, timeout=120, env=clean, cwd=tmp_path
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "unavailable as expected" in checked.stdout
    assert "pip install 'mlops-client[sklearn]'" in checked.stdout
    assert checked.stdout.strip().endswith("ok []"), checked.stdout
    assert sys.prefix != str(environment)
