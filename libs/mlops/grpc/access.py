"""Who may call what: the least role each RPC of each service needs, in one table.

People: viewers read (Get*, List*, Search*, health, metadata, inference); operators move rollouts and
aliases; admins own specs and data. Services (`svc:<name>`) read everything a viewer reads and write
only what the design has them write (their clients: services/*/clients.py, services/trainer/runs.py,
mlops.grpc.registry). A method missing from the table is refused to everyone, and a unit test fails
on any RPC in protos/ that is missing here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlops.identity import Principal, Role

OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})
"""Answered without credentials: Kubernetes probes and load balancers carry none."""


@dataclass(frozen=True)
class Rule:
    least: Role
    """The least human role (viewer < operator < admin) that may call the method."""
    services: frozenset[str] | None = frozenset()
    """The platform services (`deployer` for `svc:deployer`) that may call it; None: every service."""


_READ = Rule(Role.VIEWER, services=None)


def _write(least: Role, *services: str) -> Rule:
    return Rule(least, frozenset(services))


TABLE: dict[str, dict[str, Rule]] = {
    "mlops.registry.v1.Registry": {
        # people's own recording (mlops data commit); no service records data: the registry does,
        # from DataCommitted
        "RecordDatasetVersion": _write(Role.ADMIN),
        "GetDatasetVersion": _READ,
        "ListDatasets": _READ,
        "ListDatasetVersions": _READ,
        "RequestRetrain": _write(Role.OPERATOR),
        "ApplyModelSpec": _write(Role.ADMIN),
        "GetModelSpec": _READ,
        "ListModelSpecs": _READ,
        "RegisterModelVersion": _write(Role.ADMIN, "trainer"),
        "GetModelVersion": _READ,
        "ListModelVersions": _READ,
        "SearchModelVersions": _READ,
        "UpdateModelVersionTags": _write(Role.ADMIN),
        # runs logged from outside the platform (the Python client): operators and up
        "CreateRun": _write(Role.OPERATOR, "trainer"),
        "LogRunMetrics": _write(Role.OPERATOR, "trainer"),
        "FinishRun": _write(Role.OPERATOR, "trainer"),
        "UpdateRun": _write(Role.OPERATOR, "trainer"),
        "UploadRunArtifact": _write(Role.OPERATOR, "trainer"),
        # an outside model may create its spec and goes to production on its own: admins, as for specs
        "RegisterModel": _write(Role.ADMIN),
        "DownloadArtifact": _READ,
        "GetRun": _READ,
        "ListRuns": _READ,
        "RecordEvaluation": _write(Role.ADMIN, "evaluator"),
        "GetEvaluation": _READ,
        "ListEvaluations": _READ,
        "SetAlias": _write(Role.OPERATOR, "deployer"),
        "DeleteAlias": _write(Role.OPERATOR, "deployer"),
        "ListAliases": _READ,
        "GetAliasHistory": _READ,
        "RecordDeployment": _write(Role.ADMIN, "deployer"),
        "ListDeployments": _READ,
        "GetLineage": _READ,
    },
    "mlops.deployer.v1.Deployer": {
        "GetRollout": _READ,
        "ListRollouts": _READ,
        "GetDesiredState": _READ,
        # rollouts start from ModelEvaluated events inside the deployer; over gRPC only people move them
        "StartRollout": _write(Role.OPERATOR),
        "Promote": _write(Role.OPERATOR),
        "Rollback": _write(Role.OPERATOR),
        "Pause": _write(Role.OPERATOR),
        "Resume": _write(Role.OPERATOR),
    },
    "mlops.monitor.v1.Monitor": {
        "GetHealth": _READ,
        "GetModelHealth": _READ,
        "GetDriftStatus": _READ,
    },
    "inference.GRPCInferenceService": {
        "ServerLive": _READ,
        "ServerReady": _READ,
        "ModelReady": _READ,
        "ServerMetadata": _READ,
        "ModelMetadata": _READ,
        "ModelInfer": _READ,
        "ModelStreamInfer": _READ,
        "RepositoryIndex": _READ,
    },
    "grpc.reflection.v1alpha.ServerReflection": {"ServerReflectionInfo": _READ},
    "grpc.reflection.v1.ServerReflection": {"ServerReflectionInfo": _READ},
}


def split_method(full_method: str) -> tuple[str, str]:
    """`/pkg.Service/Method` → (`pkg.Service`, `Method`)."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def short_name(full_method: str) -> str:
    """`/mlops.deployer.v1.Deployer/Promote` → `Deployer/Promote`, as messages name it."""
    service, method = split_method(full_method)
    return f"{service.rsplit('.', 1)[-1]}/{method}"


def is_open(full_method: str) -> bool:
    return split_method(full_method)[0] in OPEN_SERVICES


def rule_for(full_method: str) -> Rule | None:
    service, method = split_method(full_method)
    return TABLE.get(service, {}).get(method)


def refusal(principal: Principal, full_method: str) -> str | None:
    """Why `principal` may not call `full_method`, or None when it may."""
    rule = rule_for(full_method)
    name = short_name(full_method)
    if rule is None:
        return f"{name} is not in the access table, so nobody may call it"
    if principal.role is Role.SERVICE:
        if rule.services is None or principal.service in rule.services:
            return None
        allowed = ", ".join(f"svc:{s}" for s in sorted(rule.services))
        return f"{principal} may not call {name}: it needs {rule.least.value}" + (
            f" or one of the services {allowed}" if allowed else ""
        )
    if principal.role.at_least(rule.least):
        return None
    return f"{principal} may not call {name}: it needs {rule.least.value}"
