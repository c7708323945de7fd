import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mlops.events.v1 import common_pb2 as _common_pb2
from mlops.events.v1 import deployment_pb2 as _deployment_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Rollout(_message.Message):
    __slots__ = ("rollout_id", "model", "candidate_version", "baseline_version", "strategy", "state", "steps", "step_index", "traffic_percent", "step_seconds", "step_started_at", "candidate_health", "baseline_health", "reason", "generation", "started_at", "updated_at", "finished_at", "history", "max_error_rate", "max_p99_latency_ms", "min_requests", "max_prediction_drift", "auto_promote", "prediction_drift", "actor", "evaluation_id")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_PERCENT_FIELD_NUMBER: _ClassVar[int]
    STEP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEP_STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_HEALTH_FIELD_NUMBER: _ClassVar[int]
    BASELINE_HEALTH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_PREDICTION_DRIFT_FIELD_NUMBER: _ClassVar[int]
    AUTO_PROMOTE_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_DRIFT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    model: str
    candidate_version: int
    baseline_version: int
    strategy: str
    state: _deployment_pb2.RolloutState
    steps: _containers.RepeatedScalarFieldContainer[int]
    step_index: int
    traffic_percent: int
    step_seconds: int
    step_started_at: _timestamp_pb2.Timestamp
    candidate_health: _common_pb2.HealthSnapshot
    baseline_health: _common_pb2.HealthSnapshot
    reason: str
    generation: int
    started_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    history: _containers.RepeatedCompositeFieldContainer[_deployment_pb2.RolloutProgressed]
    max_error_rate: float
    max_p99_latency_ms: float
    min_requests: int
    max_prediction_drift: float
    auto_promote: bool
    prediction_drift: float
    actor: str
    evaluation_id: str
    def __init__(self, rollout_id: _Optional[str] = ..., model: _Optional[str] = ..., candidate_version: _Optional[int] = ..., baseline_version: _Optional[int] = ..., strategy: _Optional[str] = ..., state: _Optional[_Union[_deployment_pb2.RolloutState, str]] = ..., steps: _Optional[_Iterable[int]] = ..., step_index: _Optional[int] = ..., traffic_percent: _Optional[int] = ..., step_seconds: _Optional[int] = ..., step_started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., candidate_health: _Optional[_Union[_common_pb2.HealthSnapshot, _Mapping]] = ..., baseline_health: _Optional[_Union[_common_pb2.HealthSnapshot, _Mapping]] = ..., reason: _Optional[str] = ..., generation: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., history: _Optional[_Iterable[_Union[_deployment_pb2.RolloutProgressed, _Mapping]]] = ..., max_error_rate: _Optional[float] = ..., max_p99_latency_ms: _Optional[float] = ..., min_requests: _Optional[int] = ..., max_prediction_drift: _Optional[float] = ..., auto_promote: _Optional[bool] = ..., prediction_drift: _Optional[float] = ..., actor: _Optional[str] = ..., evaluation_id: _Optional[str] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("model", "rollout_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    rollout_id: str
    def __init__(self, model: _Optional[str] = ..., rollout_id: _Optional[str] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("model", "state", "page_size", "page_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    state: _deployment_pb2.RolloutState
    page_size: int
    page_token: str
    def __init__(self, model: _Optional[str] = ..., state: _Optional[_Union[_deployment_pb2.RolloutState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts", "next_page_token")
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    next_page_token: str
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("model", "version", "strategy", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    strategy: str
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., strategy: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RolloutActionRequest(_message.Message):
    __slots__ = ("model", "rollout_id", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    rollout_id: str
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., rollout_id: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetDesiredStateRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...
