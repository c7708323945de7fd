"""gRPC `mlops.registry.v1.Registry`: each method hands its request to the core and returns its reply.

Errors raised by the core are platform errors; the shared interceptor maps them to status codes.
"""

from __future__ import annotations

from mlops.identity import recorded_actor
from mlops.registry.v1 import registry_pb2_grpc
from services.registry.core import RegistryCore
from services.registry.retrain import request_retrain

_METHODS = {
    "RecordDatasetVersion": "record_dataset_version",
    "GetDatasetVersion": "get_dataset_version",
    "ListDatasets": "list_datasets",
    "ListDatasetVersions": "list_dataset_versions",
    "ApplyModelSpec": "apply_model_spec",
    "GetModelSpec": "get_model_spec",
    "ListModelSpecs": "list_model_specs",
    "RegisterModelVersion": "register_model_version",
    "GetModelVersion": "get_model_version",
    "ListModelVersions": "list_model_versions",
    "SearchModelVersions": "search_model_versions",
    "UpdateModelVersionTags": "update_model_version_tags",
    "CreateRun": "create_run",
    "LogRunMetrics": "log_run_metrics",
    "FinishRun": "finish_run",
    "GetRun": "get_run",
    "ListRuns": "list_runs",
    "RecordEvaluation": "record_evaluation",
    "GetEvaluation": "get_evaluation",
    "ListEvaluations": "list_evaluations",
    "SetAlias": "set_alias",
    "DeleteAlias": "delete_alias",
    "ListAliases": "list_aliases",
    "GetAliasHistory": "get_alias_history",
    "RecordDeployment": "record_deployment",
    "ListDeployments": "list_deployments",
    "GetLineage": "get_lineage",
}


_ACTOR_FIELDS = {
    "RecordDatasetVersion": "committed_by",
    "ApplyModelSpec": "applied_by",
    "UpdateModelVersionTags": "actor",
    "SetAlias": "actor",
    "DeleteAlias": "actor",
}
"""The field of each ledgered request that names who made the change: replaced by the authenticated
caller before the core sees it (`mlops.identity.recorded_actor`)."""


def _delegate(rpc: str, core_method: str):
    field = _ACTOR_FIELDS.get(rpc)

    async def method(self, request, context):
        if field is not None:
            setattr(request, field, recorded_actor(getattr(request, field)))
        return await getattr(self.core, core_method)(request)

    method.__name__ = core_method
    return method


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    """Every RPC of the Registry service; the mapping above is checked complete at import."""

    def __init__(self, core: RegistryCore) -> None:
        self.core = core

    async def RequestRetrain(self, request, context):
        request.requested_by = recorded_actor(request.requested_by)
        return await request_retrain(self.core, request)


for _rpc, _core_method in _METHODS.items():
    setattr(RegistryServicer, _rpc, _delegate(_rpc, _core_method))

_missing = (
    set(registry_pb2_grpc.RegistryServicer.__dict__)
    - set(_METHODS)
    - {"RequestRetrain"}
    - {"__module__", "__doc__", "__dict__", "__weakref__", "__qualname__"}
)
assert not {name for name in _missing if not name.startswith("_")}, f"RPCs without a handler: {_missing}"
