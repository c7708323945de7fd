"""mlops_client without a registry: the shipped schema, its private pool, config resolution, errors and
retries against an in-process gRPC server that answers as told."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import mlops_client
import pytest
from google.protobuf import descriptor_pb2
from mlops_client import protocol
from mlops_client.client import model_spec, split_dataset
from mlops_client.config import read_config, resolve
from mlops_client.transport import Transport

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "libs" / "mlops-client"


def test_shipped_descriptor_set_is_current_with_protos(tmp_path):
    """The package's schema is what libs/mlops-client/generate.sh makes from protos/ now."""
    fresh = tmp_path / "fresh.binpb"
    subprocess.run(
        ["bash", str(PACKAGE / "generate.sh"), str(fresh)],
        check=True,
        capture_output=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    shipped = descriptor_pb2.FileDescriptorSet.FromString(
        (PACKAGE / "src" / "mlops_client" / protocol.DESCRIPTOR_SET).read_bytes()
    )
    wanted = descriptor_pb2.FileDescriptorSet.FromString(fresh.read_bytes())
    assert [f.name for f in shipped.file] == [f.name for f in wanted.file]
    assert shipped == wanted, "stale: run libs/mlops-client/generate.sh and commit the result"


def test_private_pool_coexists_with_the_platforms_generated_modules():
    from mlops.registry.v1 import registry_pb2

    ours = protocol.new("Run", run_id="r1", model="wine", tags={"team": "a"}, source="client")
    theirs = registry_pb2.Run.FromString(ours.SerializeToString())
    assert (theirs.run_id, theirs.model, dict(theirs.tags), theirs.source) == (
        "r1",
        "wine",
        {"team": "a"},
        "client",
    )
    assert protocol.pool() is not registry_pb2.DESCRIPTOR.pool
    assert type(ours) is not registry_pb2.Run


def test_every_method_the_client_calls_exists_with_its_streaming_shape():
    shapes = {
        "CreateRun": (False, False),
        "LogRunMetrics": (False, False),
        "FinishRun": (False, False),
        "UpdateRun": (False, False),
        "GetRun": (False, False),
        "ListRuns": (False, False),
        "GetModelVersion": (False, False),
        "ListAliases": (False, False),
        "RegisterModel": (True, False),
        "UploadRunArtifact": (True, False),
        "DownloadArtifact": (False, True),
    }
    for name, (client_streams, server_streams) in shapes.items():
        path, request, _, cs, ss = protocol.method(name)
        assert path == f"/mlops.registry.v1.Registry/{name}"
        assert (cs, ss) == (client_streams, server_streams), name
        assert request.DESCRIPTOR.file.pool is protocol.pool()


def test_enum_values_and_names():
    assert protocol.enum_value("RunStatus", "RUN_STATUS_FAILED") == 3
    assert protocol.enum_value("mlops.events.v1.TrainingTrigger", "TRAINING_TRIGGER_EXTERNAL") == 6
    assert protocol.enum_name("RunStatus", 2) == "RUN_STATUS_SUCCEEDED"
    assert protocol.enum_name("RunStatus", 99) == "99"


def test_a_run_message_becomes_a_dataclass_with_history_by_metric():
    message = protocol.new("Run", run_id="r", model="wine", status=2, params={"C": "1"}, metrics={"acc": 0.9})
    for epoch, loss in ((1, 0.5), (2, 0.3)):
        message.history.add(epoch=epoch, metrics={"loss": loss})
    message.started_at.FromSeconds(1_700_000_000)
    run = mlops_client.Run.from_proto(message)
    assert run.status == "SUCCEEDED" and run.experiment == "wine" and run.params == {"C": "1"}
    assert [(m.step, m.value) for m in run.history["loss"]] == [(1, 0.5), (2, 0.3)]
    assert run.started_at.timestamp() == 1_700_000_000 and run.ended_at is None


def test_data_set_references_and_specs():
    assert split_dataset("wine@3") == ("wine", 3)
    assert split_dataset("wine") == ("wine", 0)
    assert split_dataset(None) == ("", 0)
    with pytest.raises(mlops_client.InvalidArgument, match="NAME@VERSION"):
        split_dataset("wine@latest")
    spec = model_spec(
        {
            "apiVersion": "mlops/v1",
            "kind": "ModelSpec",
            "metadata": {"name": "wine"},
            "spec": {"dataset": "wine", "label": "target", "training": {"external": True}},
        }
    )
    assert spec.metadata.name == "wine" and spec.spec.training.external
    with pytest.raises(mlops_client.InvalidArgument, match="spec"):
        model_spec({"spec": {"no_such_field": 1}})


CONFIG = """\
apiVersion: mlops/v1
kind: Config
current-context: local
contexts:
- name: local
  settings:
    MLOPS_GRPC_AUTH: 'true'
    MLOPS_GRPC_CLIENT_CA_FILE: {ca}
    MLOPS_GRPC_CLIENT_TOKEN: "s3cret"
    MLOPS_REGISTRY_ADDR: 10.0.0.1:50061
- name: other
  settings:
    MLOPS_REGISTRY_ADDR: 10.0.0.2:50051
"""


@pytest.fixture
def config_file(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(ca=ca))
    return path, ca


def test_the_clis_current_context_gives_the_defaults(config_file):
    path, ca = config_file
    connection = resolve(environ={"MLOPS_CONFIG": str(path)})
    assert (connection.address, connection.ca, connection.token, connection.context) == (
        "10.0.0.1:50061",
        ca,
        "s3cret",
        "local",
    )
    assert "s3cret" not in repr(connection)


def test_arguments_win_over_variables_which_win_over_the_context(config_file):
    path, _ = config_file
    environ = {"MLOPS_CONFIG": str(path), "MLOPS_REGISTRY_ADDR": "env:1", "MLOPS_TOKEN": "from-env"}
    assert resolve(environ=environ).address == "env:1"
    assert resolve(environ=environ).token == "from-env"
    assert resolve("arg:2", environ=environ).address == "arg:2"
    assert resolve(environ={"MLOPS_CONFIG": str(path), "MLOPS_CONTEXT": "other"}).context == "other"
    assert resolve(context="other", environ={"MLOPS_CONFIG": str(path)}).address == "10.0.0.2:50051"


def test_no_configuration_means_plaintext_to_the_local_registry(tmp_path):
    connection = resolve(environ={"MLOPS_CONFIG": str(tmp_path / "absent.yaml")})
    assert (connection.address, connection.secure, connection.token) == ("127.0.0.1:50051", False, None)


def test_refuses_a_token_without_tls_and_names_missing_files(tmp_path):
    environ = {"MLOPS_CONFIG": str(tmp_path / "absent.yaml")}
    with pytest.raises(mlops_client.InvalidArgument, match="token needs TLS"):
        resolve(token="t", environ=environ)
    with pytest.raises(mlops_client.InvalidArgument, match="no file at"):
        resolve(ca=tmp_path / "nope.pem", environ=environ)
    with pytest.raises(mlops_client.NotFound, match="no context named 'x'"):
        resolve(context="x", environ=environ)


def test_the_fallback_reader_reads_what_the_cli_writes(config_file, monkeypatch):
    path, ca = config_file
    with_yaml = read_config(path)
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    assert read_config(path) == with_yaml
    assert with_yaml[1]["local"]["MLOPS_GRPC_CLIENT_CA_FILE"] == str(ca)


def test_the_real_cli_file_reads_the_same_with_and_without_pyyaml(tmp_path, monkeypatch):
    from mlops.cli import config as cli_config

    path = tmp_path / "config.yaml"
    cli_config.save(
        cli_config.Config(
            current="c",
            contexts={
                "c": {
                    "MLOPS_REGISTRY_ADDR": "h:1",
                    "MLOPS_GRPC_CLIENT_TOKEN": "it's: #1",
                    "MLOPS_DATABASE_URL": "postgresql+asyncpg://u:p@h:5432/db?sslmode=verify-full&sslrootcert=%2Fa%2Fb.pem",
                }
            },
        ),
        path,
    )
    with_yaml = read_config(path)
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert read_config(path) == with_yaml == ("c", cli_config.load(path).contexts)


@pytest.fixture
def no_settings(tmp_path, monkeypatch):
    """No variable and no CLI file: the tests' environment carries the local stack's credentials."""
    from mlops_client import config

    for names in (config.ADDRESS, config.TOKEN, config.CA, config.CERT, config.KEY, config.TLS):
        for name in names:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MLOPS_CONTEXT", raising=False)
    monkeypatch.setenv("MLOPS_CONFIG", str(tmp_path / "absent.yaml"))


class _Flaky:
    """GetRun that answers UNAVAILABLE `failures` times, then a run; counts the calls."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0
        self.lock = threading.Lock()

    def get_run(self, request, context):
        with self.lock:
            self.calls += 1
            if self.calls <= self.failures:
                context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        if request.run_id == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "run 'missing' not found")
        return protocol.new("Run", run_id=request.run_id, model="wine", status=1)


@pytest.fixture
def flaky_registry():
    servers = []

    def start(failures: int):
        handler = _Flaky(failures)
        _, request, response, _, _ = protocol.method("GetRun")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    protocol.SERVICE,
                    {
                        "GetRun": grpc.unary_unary_rpc_method_handler(
                            handler.get_run,
                            request_deserializer=request.FromString,
                            response_serializer=response.SerializeToString,
                        ),
                    },
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", handler

    yield start
    for server in servers:
        server.stop(None)


def test_retries_unavailable_with_backoff_then_succeeds(flaky_registry, no_settings):
    address, handler = flaky_registry(failures=2)
    with mlops_client.Client(address, max_attempts=3) as client:
        client._transport.backoff_s = 0.01
        run = client.get_run("r1")
    assert (run.run_id, run.status, handler.calls) == ("r1", "RUNNING", 3)


def test_gives_up_after_the_bounded_attempts_and_keeps_other_errors_typed(flaky_registry, no_settings):
    address, handler = flaky_registry(failures=10)
    client = mlops_client.Client(address, max_attempts=2)
    client._transport.backoff_s = 0.01
    with pytest.raises(mlops_client.Unavailable, match=r"after 2 attempt.*warming up"):
        client.get_run("r1")
    assert handler.calls == 2
    handler.failures = 0
    with pytest.raises(mlops_client.NotFound, match="run 'missing' not found") as caught:
        client.get_run("missing")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and handler.calls == 3  # not retried
    client.close()


def test_an_unreachable_registry_is_unavailable(tmp_path):
    transport = Transport(
        resolve("127.0.0.1:1", environ={"MLOPS_CONFIG": str(tmp_path / "x")}),
        max_attempts=2,
        backoff_s=0.01,
        timeout_s=5,
    )
    with pytest.raises(mlops_client.Unavailable, match=r"127\.0\.0\.1:1 is unavailable after 2"):
        transport.unary("GetRun", protocol.new("GetRunRequest", run_id="r"))
