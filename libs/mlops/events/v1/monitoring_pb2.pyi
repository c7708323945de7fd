import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mlops.events.v1 import common_pb2 as _common_pb2
from mlops.events.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InferenceLogged(_message.Message):
    __slots__ = ("model", "feature_names", "class_labels", "records", "sampling_rate", "server_id", "text_feature_names")
    class Record(_message.Message):
        __slots__ = ("request_id", "version", "timestamp", "features", "outputs", "label", "latency_us", "error", "role", "text_features")
        REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
        VERSION_FIELD_NUMBER: _ClassVar[int]
        TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
        FEATURES_FIELD_NUMBER: _ClassVar[int]
        OUTPUTS_FIELD_NUMBER: _ClassVar[int]
        LABEL_FIELD_NUMBER: _ClassVar[int]
        LATENCY_US_FIELD_NUMBER: _ClassVar[int]
        ERROR_FIELD_NUMBER: _ClassVar[int]
        ROLE_FIELD_NUMBER: _ClassVar[int]
        TEXT_FEATURES_FIELD_NUMBER: _ClassVar[int]
        request_id: str
        version: int
        timestamp: _timestamp_pb2.Timestamp
        features: _containers.RepeatedScalarFieldContainer[float]
        outputs: _containers.RepeatedScalarFieldContainer[float]
        label: str
        latency_us: int
        error: str
        role: _common_pb2.ServingRole
        text_features: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, request_id: _Optional[str] = ..., version: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., features: _Optional[_Iterable[float]] = ..., outputs: _Optional[_Iterable[float]] = ..., label: _Optional[str] = ..., latency_us: _Optional[int] = ..., error: _Optional[str] = ..., role: _Optional[_Union[_common_pb2.ServingRole, str]] = ..., text_features: _Optional[_Iterable[str]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_RATE_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    model: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    records: _containers.RepeatedCompositeFieldContainer[InferenceLogged.Record]
    sampling_rate: float
    server_id: str
    text_feature_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., class_labels: _Optional[_Iterable[str]] = ..., records: _Optional[_Iterable[_Union[InferenceLogged.Record, _Mapping]]] = ..., sampling_rate: _Optional[float] = ..., server_id: _Optional[str] = ..., text_feature_names: _Optional[_Iterable[str]] = ...) -> None: ...

class GroundTruthLogged(_message.Message):
    __slots__ = ("model", "request_id", "label", "value", "observed_at")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    request_id: str
    label: str
    value: float
    observed_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., request_id: _Optional[str] = ..., label: _Optional[str] = ..., value: _Optional[float] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FeatureDrift(_message.Message):
    __slots__ = ("feature", "method", "score", "p_value", "drifted")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_FIELD_NUMBER: _ClassVar[int]
    feature: str
    method: str
    score: float
    p_value: float
    drifted: bool
    def __init__(self, feature: _Optional[str] = ..., method: _Optional[str] = ..., score: _Optional[float] = ..., p_value: _Optional[float] = ..., drifted: _Optional[bool] = ...) -> None: ...

class DriftDetected(_message.Message):
    __slots__ = ("model", "version", "window", "method", "threshold", "features", "prediction_drift_score", "consecutive_windows", "sample_count", "profile_sha256", "detected_at", "new_model_needed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_DRIFT_SCORE_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_SHA256_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    NEW_MODEL_NEEDED_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    window: _common_pb2.TimeWindow
    method: str
    threshold: float
    features: _containers.RepeatedCompositeFieldContainer[FeatureDrift]
    prediction_drift_score: float
    consecutive_windows: int
    sample_count: int
    profile_sha256: str
    detected_at: _timestamp_pb2.Timestamp
    new_model_needed: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., window: _Optional[_Union[_common_pb2.TimeWindow, _Mapping]] = ..., method: _Optional[str] = ..., threshold: _Optional[float] = ..., features: _Optional[_Iterable[_Union[FeatureDrift, _Mapping]]] = ..., prediction_drift_score: _Optional[float] = ..., consecutive_windows: _Optional[int] = ..., sample_count: _Optional[int] = ..., profile_sha256: _Optional[str] = ..., detected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., new_model_needed: _Optional[bool] = ...) -> None: ...

class PerformanceDegraded(_message.Message):
    __slots__ = ("model", "version", "window", "metric", "observed", "bound", "comparison", "baseline", "sample_count", "consecutive_windows", "detected_at", "new_model_needed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    NEW_MODEL_NEEDED_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    window: _common_pb2.TimeWindow
    metric: str
    observed: float
    bound: float
    comparison: _common_pb2.Comparison
    baseline: float
    sample_count: int
    consecutive_windows: int
    detected_at: _timestamp_pb2.Timestamp
    new_model_needed: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., window: _Optional[_Union[_common_pb2.TimeWindow, _Mapping]] = ..., metric: _Optional[str] = ..., observed: _Optional[float] = ..., bound: _Optional[float] = ..., comparison: _Optional[_Union[_common_pb2.Comparison, str]] = ..., baseline: _Optional[float] = ..., sample_count: _Optional[int] = ..., consecutive_windows: _Optional[int] = ..., detected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., new_model_needed: _Optional[bool] = ...) -> None: ...
