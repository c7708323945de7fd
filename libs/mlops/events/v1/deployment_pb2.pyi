import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mlops.events.v1 import common_pb2 as _common_pb2
from mlops.events.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_STATE_UNSPECIFIED: _ClassVar[RolloutState]
    ROLLOUT_STATE_PENDING: _ClassVar[RolloutState]
    ROLLOUT_STATE_SHADOWING: _ClassVar[RolloutState]
    ROLLOUT_STATE_PROGRESSING: _ClassVar[RolloutState]
    ROLLOUT_STATE_PAUSED: _ClassVar[RolloutState]
    ROLLOUT_STATE_PROMOTED: _ClassVar[RolloutState]
    ROLLOUT_STATE_ROLLED_BACK: _ClassVar[RolloutState]
    ROLLOUT_STATE_ABORTED: _ClassVar[RolloutState]
ROLLOUT_STATE_UNSPECIFIED: RolloutState
ROLLOUT_STATE_PENDING: RolloutState
ROLLOUT_STATE_SHADOWING: RolloutState
ROLLOUT_STATE_PROGRESSING: RolloutState
ROLLOUT_STATE_PAUSED: RolloutState
ROLLOUT_STATE_PROMOTED: RolloutState
ROLLOUT_STATE_ROLLED_BACK: RolloutState
ROLLOUT_STATE_ABORTED: RolloutState

class ServingVersion(_message.Message):
    __slots__ = ("version", "artifact_uri", "artifact_sha256", "traffic_percent", "role", "task", "feature_names", "class_labels")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    version: int
    artifact_uri: str
    artifact_sha256: str
    traffic_percent: int
    role: _common_pb2.ServingRole
    task: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., artifact_uri: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., traffic_percent: _Optional[int] = ..., role: _Optional[_Union[_common_pb2.ServingRole, str]] = ..., task: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., class_labels: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchingConfig(_message.Message):
    __slots__ = ("max_batch_size", "max_wait_us")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_US_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_wait_us: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_wait_us: _Optional[int] = ...) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("model", "generation", "versions", "batching", "rollout_id", "updated_at")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    generation: int
    versions: _containers.RepeatedCompositeFieldContainer[ServingVersion]
    batching: BatchingConfig
    rollout_id: str
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., generation: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[ServingVersion, _Mapping]]] = ..., batching: _Optional[_Union[BatchingConfig, _Mapping]] = ..., rollout_id: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ModelDeployed(_message.Message):
    __slots__ = ("model", "version", "previous_version", "rollout_id", "strategy", "artifact_uri", "artifact_sha256", "generation", "actor", "reason", "deployed_at")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    previous_version: int
    rollout_id: str
    strategy: str
    artifact_uri: str
    artifact_sha256: str
    generation: int
    actor: str
    reason: str
    deployed_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., previous_version: _Optional[int] = ..., rollout_id: _Optional[str] = ..., strategy: _Optional[str] = ..., artifact_uri: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., generation: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., deployed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RolloutProgressed(_message.Message):
    __slots__ = ("rollout_id", "model", "candidate_version", "baseline_version", "strategy", "step_index", "step_count", "traffic_percent", "state", "candidate_health", "baseline_health", "reason", "actor", "generation", "progressed_at")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_PERCENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_HEALTH_FIELD_NUMBER: _ClassVar[int]
    BASELINE_HEALTH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PROGRESSED_AT_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    model: str
    candidate_version: int
    baseline_version: int
    strategy: str
    step_index: int
    step_count: int
    traffic_percent: int
    state: RolloutState
    candidate_health: _common_pb2.HealthSnapshot
    baseline_health: _common_pb2.HealthSnapshot
    reason: str
    actor: str
    generation: int
    progressed_at: _timestamp_pb2.Timestamp
    def __init__(self, rollout_id: _Optional[str] = ..., model: _Optional[str] = ..., candidate_version: _Optional[int] = ..., baseline_version: _Optional[int] = ..., strategy: _Optional[str] = ..., step_index: _Optional[int] = ..., step_count: _Optional[int] = ..., traffic_percent: _Optional[int] = ..., state: _Optional[_Union[RolloutState, str]] = ..., candidate_health: _Optional[_Union[_common_pb2.HealthSnapshot, _Mapping]] = ..., baseline_health: _Optional[_Union[_common_pb2.HealthSnapshot, _Mapping]] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., generation: _Optional[int] = ..., progressed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ModelRolledBack(_message.Message):
    __slots__ = ("rollout_id", "model", "from_version", "to_version", "reason", "automatic", "actor", "candidate_health", "baseline_health", "generation", "rolled_back_at")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AUTOMATIC_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_HEALTH_FIELD_NUMBER: _ClassVar[int]
    BASELINE_HEALTH_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_AT_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    model: str
    from_version: int
    to_version: int
    reason: str
    automatic: bool
    actor: str
    candidate_health: _common_pb2.HealthSnapshot
    baseline_health: _common_pb2.HealthSnapshot
    generation: int
    rolled_back_at: _timestamp_pb2.Timestamp
    def __init__(self, rollout_id: _Optional[str] = ..., model: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., reason: _Optional[str] = ..., automatic: _Optional[bool] = ..., actor: _Optional[str] = ..., candidate_health: _Optional[_Union[_common_pb2.HealthSnapshot, _Mapping]] = ..., baseline_health: _Optional[_Union[_common_pb2.HealthSnapshot, _Mapping]] = ..., generation: _Optional[int] = ..., rolled_back_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
