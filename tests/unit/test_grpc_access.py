"""The access table: complete for every RPC in protos/, least roles as the design gives them; and the
server and client security settings refusing incoherent combinations."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inference import grpc_service_pb2
from mlops.deployer.v1 import deployer_pb2
from mlops.grpc.access import TABLE, is_open, refusal, rule_for
from mlops.identity import Principal, Role, token_line
from mlops.monitor.v1 import monitor_pb2
from mlops.registry.v1 import registry_pb2
from mlops.settings import GrpcClientSettings, GrpcServerSettings

API_FILES = (registry_pb2, deployer_pb2, monitor_pb2, grpc_service_pb2)


def every_method() -> list[str]:
    return [
        f"/{service.full_name}/{method.name}"
        for module in API_FILES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def person(role: Role) -> Principal:
    return Principal(f"user:{role.value}", role, "token")


def service(name: str) -> Principal:
    return Principal(f"svc:{name}", Role.SERVICE, "certificate")


def test_every_rpc_of_every_api_is_in_the_table():
    methods = every_method()
    assert len(methods) > 40  # the descriptors were walked, not an empty module
    missing = [method for method in methods if rule_for(method) is None]
    assert missing == []


def test_the_table_names_no_rpc_the_protos_lack():
    known = {method.lstrip("/") for method in every_method()}
    stale = [
        f"{service}/{method}"
        for service, rules in TABLE.items()
        if not service.startswith("grpc.")
        for method in rules
        if f"{service}/{method}" not in known
    ]
    assert stale == []


def test_viewers_read_every_get_list_and_search():
    reads = [m for m in every_method() if m.rsplit("/", 1)[1].startswith(("Get", "List", "Search"))]
    assert reads
    assert [m for m in reads if refusal(person(Role.VIEWER), m)] == []


@pytest.mark.parametrize(
    ("method", "least"),
    [
        ("/mlops.deployer.v1.Deployer/StartRollout", Role.OPERATOR),
        ("/mlops.deployer.v1.Deployer/Promote", Role.OPERATOR),
        ("/mlops.deployer.v1.Deployer/Rollback", Role.OPERATOR),
        ("/mlops.registry.v1.Registry/SetAlias", Role.OPERATOR),
        ("/mlops.registry.v1.Registry/DeleteAlias", Role.OPERATOR),
        ("/mlops.registry.v1.Registry/ApplyModelSpec", Role.ADMIN),
        ("/mlops.registry.v1.Registry/RegisterModelVersion", Role.ADMIN),
        ("/mlops.registry.v1.Registry/RecordDatasetVersion", Role.ADMIN),
        ("/mlops.registry.v1.Registry/UpdateModelVersionTags", Role.ADMIN),
    ],
)
def test_mutations_need_their_least_role_and_no_less(method, least):
    ranked = [Role.VIEWER, Role.OPERATOR, Role.ADMIN]
    for role in ranked:
        allowed = refusal(person(role), method) is None
        assert allowed == (ranked.index(role) >= ranked.index(least)), (role, method)


def test_the_refusal_names_the_caller_the_method_and_the_role_it_needs():
    message = refusal(Principal("user:alice", Role.VIEWER, "token"), "/mlops.deployer.v1.Deployer/Promote")
    assert message == "user:alice (viewer) may not call Deployer/Promote: it needs operator"


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("deployer", "/mlops.registry.v1.Registry/SetAlias"),
        ("deployer", "/mlops.registry.v1.Registry/DeleteAlias"),
        ("deployer", "/mlops.registry.v1.Registry/RecordDeployment"),
        ("deployer", "/mlops.monitor.v1.Monitor/GetHealth"),
        ("evaluator", "/mlops.registry.v1.Registry/RecordEvaluation"),
        ("trainer", "/mlops.registry.v1.Registry/RegisterModelVersion"),
        ("trainer", "/mlops.registry.v1.Registry/CreateRun"),
        ("trainer", "/mlops.registry.v1.Registry/LogRunMetrics"),
        ("trainer", "/mlops.registry.v1.Registry/FinishRun"),
        ("inference", "/mlops.registry.v1.Registry/GetModelVersion"),
    ],
)
def test_services_may_make_the_calls_the_design_gives_them(name, method):
    assert refusal(service(name), method) is None


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("monitor", "/mlops.registry.v1.Registry/SetAlias"),
        # the registry alone records data set versions: the others commit data as events
        ("monitor", "/mlops.registry.v1.Registry/RecordDatasetVersion"),
        ("trainer", "/mlops.registry.v1.Registry/RecordDatasetVersion"),
        ("evaluator", "/mlops.registry.v1.Registry/RegisterModelVersion"),
        ("trainer", "/mlops.registry.v1.Registry/ApplyModelSpec"),
        ("deployer", "/mlops.deployer.v1.Deployer/Promote"),
        ("inference", "/mlops.registry.v1.Registry/RecordEvaluation"),
    ],
)
def test_services_may_not_make_other_writes(name, method):
    message = refusal(service(name), method)
    assert message is not None and message.startswith(f"svc:{name} (service) may not call ")


def test_a_method_missing_from_the_table_is_refused_even_to_admins():
    message = refusal(person(Role.ADMIN), "/mlops.registry.v1.Registry/DropEverything")
    assert message == "Registry/DropEverything is not in the access table, so nobody may call it"


def test_health_checks_are_open_and_nothing_else_is():
    assert is_open("/grpc.health.v1.Health/Check") and is_open("/grpc.health.v1.Health/Watch")
    assert [m for m in every_method() if is_open(m)] == []


# --- settings ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _settings_state_their_own(monkeypatch):
    """The tests' process carries the stack's gRPC settings (tests/conftest.py); these tests name theirs."""
    import os

    for name in [n for n in os.environ if n.startswith("MLOPS_GRPC_") or n == "MLOPS_ENV"]:
        monkeypatch.delenv(name)


@pytest.fixture
def pem_files(tmp_path):
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("placeholder")
    (tmp_path / "tokens").write_text(token_line("t", "user:alice", Role.VIEWER) + "\n")
    return tmp_path


def test_security_is_off_by_default():
    settings = GrpcServerSettings()
    assert (settings.tls_cert, settings.auth) == (None, False)
    assert not GrpcClientSettings().secure


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"tls_cert": "cert.pem"}, "MLOPS_GRPC_TLS_CERT and MLOPS_GRPC_TLS_KEY go together"),
        ({"tls_client_ca": "ca.pem"}, "MLOPS_GRPC_TLS_CLIENT_CA needs MLOPS_GRPC_TLS_CERT"),
        ({"auth": True, "token_file": "tokens"}, "MLOPS_GRPC_AUTH needs MLOPS_GRPC_TLS_CERT .*plaintext"),
        ({"auth": True, "tls_cert": "cert.pem", "tls_key": "key.pem"}, "nobody could prove who they are"),
        ({"token_file": "tokens"}, "take effect only with MLOPS_GRPC_AUTH=true"),
        (
            {
                "tls_cert": "cert.pem",
                "tls_key": "key.pem",
                "tls_client_ca": "ca.pem",
                "auth": True,
                "token_port": 1,
            },
            "MLOPS_GRPC_TOKEN_PORT admits token holders only: it needs .*MLOPS_GRPC_TOKEN_FILE",
        ),
        ({"tls_cert": "absent.pem", "tls_key": "key.pem"}, "MLOPS_GRPC_TLS_CERT .*absent.pem does not exist"),
    ],
)
def test_incoherent_server_security_is_refused_naming_the_variables(pem_files, fields, problem):
    fields = {k: pem_files / v if isinstance(v, str) else v for k, v in fields.items()}
    with pytest.raises(ValidationError, match=problem):
        GrpcServerSettings(**fields)


def test_coherent_server_security_is_accepted(pem_files):
    settings = GrpcServerSettings(
        tls_cert=pem_files / "cert.pem",
        tls_key=pem_files / "key.pem",
        tls_client_ca=pem_files / "ca.pem",
        auth=True,
        token_file=pem_files / "tokens",
        cert_roles={"user:alice": "operator"},
    )
    assert settings.auth and settings.cert_roles == {"user:alice": "operator"}


def test_server_security_comes_from_the_environment(pem_files, monkeypatch):
    monkeypatch.setenv("MLOPS_GRPC_TLS_CERT", str(pem_files / "cert.pem"))
    monkeypatch.setenv("MLOPS_GRPC_TLS_KEY", str(pem_files / "key.pem"))
    monkeypatch.setenv("MLOPS_GRPC_AUTH", "true")
    monkeypatch.setenv("MLOPS_GRPC_TOKEN_FILE", str(pem_files / "tokens"))
    monkeypatch.setenv("MLOPS_GRPC_CERT_ROLES", '{"svc:deployer": "service"}')
    settings = GrpcServerSettings(port=0)
    assert settings.auth and settings.cert_roles == {"svc:deployer": "service"}


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"token": "t"}, "MLOPS_GRPC_CLIENT_TOKEN needs TLS"),
        ({"cert_file": "cert.pem"}, "MLOPS_GRPC_CLIENT_CERT_FILE and MLOPS_GRPC_CLIENT_KEY_FILE go together"),
        ({"ca_file": "absent.pem"}, "MLOPS_GRPC_CLIENT_CA_FILE .*absent.pem does not exist"),
    ],
)
def test_incoherent_client_security_is_refused(pem_files, fields, problem):
    fields = {k: pem_files / v if k.endswith("_file") else v for k, v in fields.items()}
    with pytest.raises(ValidationError, match=problem):
        GrpcClientSettings(**fields)


def test_the_client_token_stays_out_of_repr(pem_files):
    settings = GrpcClientSettings(ca_file=pem_files / "ca.pem", token="very-secret")
    assert settings.secure and "very-secret" not in repr(settings)


def test_production_refuses_a_plaintext_or_unauthorised_server_and_a_plaintext_client(pem_files, monkeypatch):
    monkeypatch.setenv("MLOPS_ENV", "production")
    with pytest.raises(ValidationError, match="production needs MLOPS_GRPC_TLS_CERT"):
        GrpcServerSettings()
    with pytest.raises(ValidationError, match="production needs MLOPS_GRPC_TLS_CERT"):
        GrpcServerSettings(tls_cert=pem_files / "cert.pem", tls_key=pem_files / "key.pem")
    with pytest.raises(ValidationError, match="gRPC client without TLS"):
        GrpcClientSettings()
    secured = GrpcServerSettings(
        tls_cert=pem_files / "cert.pem",
        tls_key=pem_files / "key.pem",
        tls_client_ca=pem_files / "ca.pem",
        auth=True,
        token_file=pem_files / "tokens",
        token_port=0,
    )
    assert secured.auth and GrpcClientSettings(ca_file=pem_files / "ca.pem").secure


def test_every_rpc_a_service_calls_is_one_the_table_lets_it_call():
    """Read off the services' code: each `stub.Method(` and `.call("Method"` a service makes."""
    import re
    from pathlib import Path

    from mlops.identity import Principal

    root = Path(__file__).resolve().parents[2]
    owners: dict[str, list[str]] = {}
    for service, methods in TABLE.items():
        for method in methods:
            owners.setdefault(method, []).append(service)
    calls = re.compile(r"(?:stub\.|\.call\(\s*\")([A-Z][A-Za-z]+)")
    # RegistryPeer's methods (libs/mlops/grpc/registry.py) make calls on the services' behalf.
    peer = (root / "libs/mlops/grpc/registry.py").read_text()
    peer_calls = {
        name: set(calls.findall(body))
        for name, body in re.findall(r"async def (\w+)\((.*?)(?=\n    (?:async )?def |\Z)", peer, re.S)
    }
    assert peer_calls.get("specs_for_dataset") == {"ListModelSpecs"}, peer_calls
    checked = 0
    for folder in sorted((root / "services").iterdir()):
        if not (folder / "__main__.py").exists():
            continue
        code = "".join(path.read_text() for path in folder.rglob("*.py"))
        caller = Principal(f"svc:{folder.name}", Role.SERVICE, "certificate")
        made = set(calls.findall(code))
        made |= {rpc for name, rpcs in peer_calls.items() if f".{name}(" in code for rpc in rpcs}
        for method in sorted(made):
            for service in owners.get(method, []):
                if service.startswith("inference.") or service.startswith("grpc."):
                    continue
                assert refusal(caller, f"/{service}/{method}") is None, f"{folder.name} calls {method}"
                checked += 1
    assert checked >= 11, "the calls were not found: has the way services call changed?"
