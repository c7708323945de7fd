import datetime

from google.protobuf import duration_pb2 as _duration_pb2
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

class TrainingStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_STAGE_UNSPECIFIED: _ClassVar[TrainingStage]
    TRAINING_STAGE_RESOLVE: _ClassVar[TrainingStage]
    TRAINING_STAGE_LOAD_DATA: _ClassVar[TrainingStage]
    TRAINING_STAGE_VALIDATE_DATA: _ClassVar[TrainingStage]
    TRAINING_STAGE_TRAIN: _ClassVar[TrainingStage]
    TRAINING_STAGE_EXPORT: _ClassVar[TrainingStage]
    TRAINING_STAGE_PARITY_CHECK: _ClassVar[TrainingStage]
    TRAINING_STAGE_PROFILE: _ClassVar[TrainingStage]
    TRAINING_STAGE_UPLOAD: _ClassVar[TrainingStage]
    TRAINING_STAGE_REGISTER: _ClassVar[TrainingStage]
TRAINING_STAGE_UNSPECIFIED: TrainingStage
TRAINING_STAGE_RESOLVE: TrainingStage
TRAINING_STAGE_LOAD_DATA: TrainingStage
TRAINING_STAGE_VALIDATE_DATA: TrainingStage
TRAINING_STAGE_TRAIN: TrainingStage
TRAINING_STAGE_EXPORT: TrainingStage
TRAINING_STAGE_PARITY_CHECK: TrainingStage
TRAINING_STAGE_PROFILE: TrainingStage
TRAINING_STAGE_UPLOAD: TrainingStage
TRAINING_STAGE_REGISTER: TrainingStage

class TrainingStarted(_message.Message):
    __slots__ = ("model", "spec_version", "dataset", "dataset_version", "dataset_sha256", "run_id", "trigger", "trigger_event_id", "params", "hardware", "started_at")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    spec_version: int
    dataset: str
    dataset_version: int
    dataset_sha256: str
    run_id: str
    trigger: _common_pb2.TrainingTrigger
    trigger_event_id: str
    params: _containers.ScalarMap[str, str]
    hardware: str
    started_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., spec_version: _Optional[int] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[int] = ..., dataset_sha256: _Optional[str] = ..., run_id: _Optional[str] = ..., trigger: _Optional[_Union[_common_pb2.TrainingTrigger, str]] = ..., trigger_event_id: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., hardware: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ModelTrained(_message.Message):
    __slots__ = ("model", "version", "spec_version", "dataset", "dataset_version", "dataset_sha256", "run_id", "trigger", "artifact_uri", "artifact_sha256", "artifact_size_bytes", "profile_uri", "profile_sha256", "metrics", "parity_tolerance", "parity_max_abs_diff", "training_duration", "epochs_run", "task", "feature_names", "class_labels", "trained_at")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROFILE_URI_FIELD_NUMBER: _ClassVar[int]
    PROFILE_SHA256_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARITY_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    PARITY_MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DURATION_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_RUN_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    spec_version: int
    dataset: str
    dataset_version: int
    dataset_sha256: str
    run_id: str
    trigger: _common_pb2.TrainingTrigger
    artifact_uri: str
    artifact_sha256: str
    artifact_size_bytes: int
    profile_uri: str
    profile_sha256: str
    metrics: _containers.ScalarMap[str, float]
    parity_tolerance: float
    parity_max_abs_diff: float
    training_duration: _duration_pb2.Duration
    epochs_run: int
    task: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    trained_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., spec_version: _Optional[int] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[int] = ..., dataset_sha256: _Optional[str] = ..., run_id: _Optional[str] = ..., trigger: _Optional[_Union[_common_pb2.TrainingTrigger, str]] = ..., artifact_uri: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., artifact_size_bytes: _Optional[int] = ..., profile_uri: _Optional[str] = ..., profile_sha256: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., parity_tolerance: _Optional[float] = ..., parity_max_abs_diff: _Optional[float] = ..., training_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., epochs_run: _Optional[int] = ..., task: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., class_labels: _Optional[_Iterable[str]] = ..., trained_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrainingFailed(_message.Message):
    __slots__ = ("model", "spec_version", "dataset", "dataset_version", "dataset_sha256", "run_id", "trigger", "stage", "reason", "error_type", "retryable", "failed_at")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    spec_version: int
    dataset: str
    dataset_version: int
    dataset_sha256: str
    run_id: str
    trigger: _common_pb2.TrainingTrigger
    stage: TrainingStage
    reason: str
    error_type: str
    retryable: bool
    failed_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., spec_version: _Optional[int] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[int] = ..., dataset_sha256: _Optional[str] = ..., run_id: _Optional[str] = ..., trigger: _Optional[_Union[_common_pb2.TrainingTrigger, str]] = ..., stage: _Optional[_Union[TrainingStage, str]] = ..., reason: _Optional[str] = ..., error_type: _Optional[str] = ..., retryable: _Optional[bool] = ..., failed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RetrainRequested(_message.Message):
    __slots__ = ("model", "version", "trigger", "reason", "cause_event_id", "window", "dataset_version", "requested_by", "requested_at")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CAUSE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    trigger: _common_pb2.TrainingTrigger
    reason: str
    cause_event_id: str
    window: _common_pb2.TimeWindow
    dataset_version: int
    requested_by: str
    requested_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., trigger: _Optional[_Union[_common_pb2.TrainingTrigger, str]] = ..., reason: _Optional[str] = ..., cause_event_id: _Optional[str] = ..., window: _Optional[_Union[_common_pb2.TimeWindow, _Mapping]] = ..., dataset_version: _Optional[int] = ..., requested_by: _Optional[str] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
