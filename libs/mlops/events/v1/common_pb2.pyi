import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingTrigger(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_TRIGGER_UNSPECIFIED: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_DATA_COMMITTED: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_DRIFT: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_DEGRADATION: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_MANUAL: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_SPEC_CHANGED: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_EXTERNAL: _ClassVar[TrainingTrigger]

class Comparison(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPARISON_UNSPECIFIED: _ClassVar[Comparison]
    COMPARISON_GREATER_OR_EQUAL: _ClassVar[Comparison]
    COMPARISON_LESS_OR_EQUAL: _ClassVar[Comparison]
    COMPARISON_GREATER: _ClassVar[Comparison]
    COMPARISON_LESS: _ClassVar[Comparison]

class ServingRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVING_ROLE_UNSPECIFIED: _ClassVar[ServingRole]
    SERVING_ROLE_PRODUCTION: _ClassVar[ServingRole]
    SERVING_ROLE_CANARY: _ClassVar[ServingRole]
    SERVING_ROLE_SHADOW: _ClassVar[ServingRole]
TRAINING_TRIGGER_UNSPECIFIED: TrainingTrigger
TRAINING_TRIGGER_DATA_COMMITTED: TrainingTrigger
TRAINING_TRIGGER_DRIFT: TrainingTrigger
TRAINING_TRIGGER_DEGRADATION: TrainingTrigger
TRAINING_TRIGGER_MANUAL: TrainingTrigger
TRAINING_TRIGGER_SPEC_CHANGED: TrainingTrigger
TRAINING_TRIGGER_EXTERNAL: TrainingTrigger
COMPARISON_UNSPECIFIED: Comparison
COMPARISON_GREATER_OR_EQUAL: Comparison
COMPARISON_LESS_OR_EQUAL: Comparison
COMPARISON_GREATER: Comparison
COMPARISON_LESS: Comparison
SERVING_ROLE_UNSPECIFIED: ServingRole
SERVING_ROLE_PRODUCTION: ServingRole
SERVING_ROLE_CANARY: ServingRole
SERVING_ROLE_SHADOW: ServingRole

class TimeWindow(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "type", "nullable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NULLABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    nullable: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., nullable: _Optional[bool] = ...) -> None: ...

class HealthSnapshot(_message.Message):
    __slots__ = ("version", "window", "request_count", "error_count", "error_rate", "latency_p50_ms", "latency_p99_ms", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    version: int
    window: TimeWindow
    request_count: int
    error_count: int
    error_rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, version: _Optional[int] = ..., window: _Optional[_Union[TimeWindow, _Mapping]] = ..., request_count: _Optional[int] = ..., error_count: _Optional[int] = ..., error_rate: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...
