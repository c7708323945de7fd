"""gRPC `mlops.registry.v1.Registry`: each method hands its request to one of the core's aggregates and
returns its reply.

Errors raised by the core are platform errors; the shared interceptor maps them to status codes.
"""

from __future__ import annotations

from mlops.identity import recorded_actor
from mlops.registry.v1 import registry_pb2_grpc
from services.registry.core import RegistryCore

_METHODS = {
    "RecordDatasetVersion": ("datasets", "record_dataset_version"),
    "GetDatasetVersion": ("datasets", "get_dataset_version"),
    "ListDatasets": ("datasets", "list_datasets"),
    "ListDatasetVersions": ("datasets", "list_dataset_versions"),
    "ApplyModelSpec": ("specs", "apply_model_spec"),
    "GetModelSpec": ("specs", "get_model_spec"),
    "ListModelSpecs": ("specs", "list_model_specs"),
    "RegisterModelVersion": ("versions", "register_model_version"),
    "GetModelVersion": ("versions", "get_model_version"),
    "ListModelVersions": ("versions", "list_model_versions"),
    "SearchModelVersions": ("versions", "search_model_versions"),
    "UpdateModelVersionTags": ("versions", "update_model_version_tags"),
    "CreateRun": ("runs", "create_run"),
    "LogRunMetrics": ("runs", "log_run_metrics"),
    "FinishRun": ("runs", "finish_run"),
    "GetRun": ("runs", "get_run"),
    "ListRuns": ("runs", "list_runs"),
    "RecordEvaluation": ("evaluations", "record_evaluation"),
    "GetEvaluation": ("evaluations", "get_evaluation"),
    "ListEvaluations": ("evaluations", "list_evaluations"),
    "SetAlias": ("aliases", "set_alias"),
    "DeleteAlias": ("aliases", "delete_alias"),
    "ListAliases": ("aliases", "list_aliases"),
    "GetAliasHistory": ("aliases", "get_alias_history"),
    "RecordDeployment": ("deployments", "record_deployment"),
    "ListDeployments": ("deployments", "list_deployments"),
    "GetLineage": ("lineage", "get_lineage"),
    "RequestRetrain": ("retraining", "request_retrain"),
    "UpdateRun": ("runs", "update_run"),
}
"""Each RPC's aggregate of the core and its method there."""


_ACTOR_FIELDS = {
    "RecordDatasetVersion": "committed_by",
    "ApplyModelSpec": "applied_by",
    "UpdateModelVersionTags": "actor",
    "SetAlias": "actor",
    "DeleteAlias": "actor",
    "RequestRetrain": "requested_by",
}
"""The field of each ledgered request that names who made the change: replaced by the authenticated
caller before the core sees it (`mlops.identity.recorded_actor`)."""


def _delegate(rpc: str, aggregate: str, core_method: str):
    field = _ACTOR_FIELDS.get(rpc)

    async def method(self, request, context):
        if field is not None:
            setattr(request, field, recorded_actor(getattr(request, field)))
        return await getattr(getattr(self.core, aggregate), core_method)(request)

    method.__name__ = core_method
    return method


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    """Every RPC of the Registry service; the mapping above and the streams below are checked complete
    at import."""

    def __init__(self, core: RegistryCore) -> None:
        self.core = core

    async def RegisterModel(self, request_iterator, context):
        # The caller who registers is who applies the spec it creates or carries.
        return await self.core.external.register_model(request_iterator, applied_by=recorded_actor(""))

    async def UploadRunArtifact(self, request_iterator, context):
        return await self.core.artifacts.upload_run_artifact(request_iterator)

    async def DownloadArtifact(self, request, context):
        async for chunk in await self.core.artifacts.download_artifact(request):
            yield chunk


_STREAMS = {"RegisterModel", "UploadRunArtifact", "DownloadArtifact"}


for _rpc, (_aggregate, _core_method) in _METHODS.items():
    setattr(RegistryServicer, _rpc, _delegate(_rpc, _aggregate, _core_method))

_missing = (
    set(registry_pb2_grpc.RegistryServicer.__dict__)
    - set(_METHODS)
    - _STREAMS
    - {"__module__", "__doc__", "__dict__", "__weakref__", "__qualname__"}
)
assert not {name for name in _missing if not name.startswith("_")}, f"RPCs without a handler: {_missing}"
