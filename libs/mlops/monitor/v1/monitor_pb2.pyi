import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mlops.events.v1 import common_pb2 as _common_pb2
from mlops.events.v1 import monitoring_pb2 as _monitoring_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetHealthRequest(_message.Message):
    __slots__ = ("model", "version", "window_seconds", "baseline_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    window_seconds: int
    baseline_version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., window_seconds: _Optional[int] = ..., baseline_version: _Optional[int] = ...) -> None: ...

class GetHealthResponse(_message.Message):
    __slots__ = ("health", "prediction_drift", "baseline_version", "sample_count")
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_DRIFT_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    health: _common_pb2.HealthSnapshot
    prediction_drift: float
    baseline_version: int
    sample_count: int
    def __init__(self, health: _Optional[_Union[_common_pb2.HealthSnapshot, _Mapping]] = ..., prediction_drift: _Optional[float] = ..., baseline_version: _Optional[int] = ..., sample_count: _Optional[int] = ...) -> None: ...

class GetModelHealthRequest(_message.Message):
    __slots__ = ("model", "window_seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    window_seconds: int
    def __init__(self, model: _Optional[str] = ..., window_seconds: _Optional[int] = ...) -> None: ...

class GetModelHealthResponse(_message.Message):
    __slots__ = ("model", "versions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    versions: _containers.RepeatedCompositeFieldContainer[_common_pb2.HealthSnapshot]
    def __init__(self, model: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[_common_pb2.HealthSnapshot, _Mapping]]] = ...) -> None: ...

class GetDriftStatusRequest(_message.Message):
    __slots__ = ("model", "version", "window_limit")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_LIMIT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    window_limit: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., window_limit: _Optional[int] = ...) -> None: ...

class DriftWindow(_message.Message):
    __slots__ = ("window", "sample_count", "features", "prediction_drift_score", "drifted", "judged", "statistics", "late_count")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_DRIFT_SCORE_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_FIELD_NUMBER: _ClassVar[int]
    JUDGED_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    LATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    window: _common_pb2.TimeWindow
    sample_count: int
    features: _containers.RepeatedCompositeFieldContainer[_monitoring_pb2.FeatureDrift]
    prediction_drift_score: float
    drifted: bool
    judged: bool
    statistics: _containers.RepeatedCompositeFieldContainer[_monitoring_pb2.FeatureDrift]
    late_count: int
    def __init__(self, window: _Optional[_Union[_common_pb2.TimeWindow, _Mapping]] = ..., sample_count: _Optional[int] = ..., features: _Optional[_Iterable[_Union[_monitoring_pb2.FeatureDrift, _Mapping]]] = ..., prediction_drift_score: _Optional[float] = ..., drifted: _Optional[bool] = ..., judged: _Optional[bool] = ..., statistics: _Optional[_Iterable[_Union[_monitoring_pb2.FeatureDrift, _Mapping]]] = ..., late_count: _Optional[int] = ...) -> None: ...

class VersionDrift(_message.Message):
    __slots__ = ("version", "method", "threshold", "consecutive_windows", "windows", "last_alarm_at", "live_metrics", "degraded_windows", "last_degradation_at", "profile_sha256", "new_model_needed_at", "new_model_reason")
    class LiveMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    LAST_ALARM_AT_FIELD_NUMBER: _ClassVar[int]
    LIVE_METRICS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    LAST_DEGRADATION_AT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_SHA256_FIELD_NUMBER: _ClassVar[int]
    NEW_MODEL_NEEDED_AT_FIELD_NUMBER: _ClassVar[int]
    NEW_MODEL_REASON_FIELD_NUMBER: _ClassVar[int]
    version: int
    method: str
    threshold: float
    consecutive_windows: int
    windows: _containers.RepeatedCompositeFieldContainer[DriftWindow]
    last_alarm_at: _timestamp_pb2.Timestamp
    live_metrics: _containers.ScalarMap[str, float]
    degraded_windows: int
    last_degradation_at: _timestamp_pb2.Timestamp
    profile_sha256: str
    new_model_needed_at: _timestamp_pb2.Timestamp
    new_model_reason: str
    def __init__(self, version: _Optional[int] = ..., method: _Optional[str] = ..., threshold: _Optional[float] = ..., consecutive_windows: _Optional[int] = ..., windows: _Optional[_Iterable[_Union[DriftWindow, _Mapping]]] = ..., last_alarm_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., live_metrics: _Optional[_Mapping[str, float]] = ..., degraded_windows: _Optional[int] = ..., last_degradation_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., profile_sha256: _Optional[str] = ..., new_model_needed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., new_model_reason: _Optional[str] = ...) -> None: ...

class GetDriftStatusResponse(_message.Message):
    __slots__ = ("model", "versions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionDrift]
    def __init__(self, model: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionDrift, _Mapping]]] = ...) -> None: ...
