import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mlops.events.v1 import common_pb2 as _common_pb2
from mlops.events.v1 import data_pb2 as _data_pb2
from mlops.events.v1 import deployment_pb2 as _deployment_pb2
from mlops.events.v1 import evaluation_pb2 as _evaluation_pb2
from mlops.events.v1 import monitoring_pb2 as _monitoring_pb2
from mlops.events.v1 import training_pb2 as _training_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_SUCCEEDED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELLED: _ClassVar[RunStatus]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_SUCCEEDED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELLED: RunStatus

class ModelSpec(_message.Message):
    __slots__ = ("api_version", "kind", "metadata", "spec")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: ModelSpecBody
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[ModelSpecBody, _Mapping]] = ...) -> None: ...

class ObjectMeta(_message.Message):
    __slots__ = ("name", "labels", "annotations")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    annotations: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., annotations: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ModelSpecBody(_message.Message):
    __slots__ = ("dataset", "task", "label", "features", "slices", "training", "gate", "rollout", "monitor", "serving")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    task: str
    label: str
    features: _containers.RepeatedScalarFieldContainer[str]
    slices: _containers.RepeatedScalarFieldContainer[str]
    training: TrainingSpec
    gate: GateSpec
    rollout: RolloutSpec
    monitor: MonitorSpec
    serving: ServingSpec
    def __init__(self, dataset: _Optional[str] = ..., task: _Optional[str] = ..., label: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., slices: _Optional[_Iterable[str]] = ..., training: _Optional[_Union[TrainingSpec, _Mapping]] = ..., gate: _Optional[_Union[GateSpec, _Mapping]] = ..., rollout: _Optional[_Union[RolloutSpec, _Mapping]] = ..., monitor: _Optional[_Union[MonitorSpec, _Mapping]] = ..., serving: _Optional[_Union[ServingSpec, _Mapping]] = ...) -> None: ...

class TrainingSpec(_message.Message):
    __slots__ = ("hidden_layers", "epochs", "learning_rate", "batch_size", "seed", "early_stopping_patience", "search", "validation_fraction", "test_fraction", "dropout", "weight_decay", "parity_tolerance", "max_seconds", "external")
    HIDDEN_LAYERS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_PATIENCE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    TEST_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    PARITY_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_FIELD_NUMBER: _ClassVar[int]
    hidden_layers: _containers.RepeatedScalarFieldContainer[int]
    epochs: int
    learning_rate: float
    batch_size: int
    seed: int
    early_stopping_patience: int
    search: SearchSpec
    validation_fraction: float
    test_fraction: float
    dropout: float
    weight_decay: float
    parity_tolerance: float
    max_seconds: int
    external: bool
    def __init__(self, hidden_layers: _Optional[_Iterable[int]] = ..., epochs: _Optional[int] = ..., learning_rate: _Optional[float] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., early_stopping_patience: _Optional[int] = ..., search: _Optional[_Union[SearchSpec, _Mapping]] = ..., validation_fraction: _Optional[float] = ..., test_fraction: _Optional[float] = ..., dropout: _Optional[float] = ..., weight_decay: _Optional[float] = ..., parity_tolerance: _Optional[float] = ..., max_seconds: _Optional[int] = ..., external: _Optional[bool] = ...) -> None: ...

class SearchSpec(_message.Message):
    __slots__ = ("trials", "params", "metric")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SearchParam
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SearchParam, _Mapping]] = ...) -> None: ...
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    trials: int
    params: _containers.MessageMap[str, SearchParam]
    metric: str
    def __init__(self, trials: _Optional[int] = ..., params: _Optional[_Mapping[str, SearchParam]] = ..., metric: _Optional[str] = ...) -> None: ...

class SearchParam(_message.Message):
    __slots__ = ("uniform", "log_uniform", "int_uniform", "choice")
    UNIFORM_FIELD_NUMBER: _ClassVar[int]
    LOG_UNIFORM_FIELD_NUMBER: _ClassVar[int]
    INT_UNIFORM_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    uniform: Range
    log_uniform: Range
    int_uniform: IntRange
    choice: _struct_pb2.ListValue
    def __init__(self, uniform: _Optional[_Union[Range, _Mapping]] = ..., log_uniform: _Optional[_Union[Range, _Mapping]] = ..., int_uniform: _Optional[_Union[IntRange, _Mapping]] = ..., choice: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class IntRange(_message.Message):
    __slots__ = ("low", "high", "step")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    low: int
    high: int
    step: int
    def __init__(self, low: _Optional[int] = ..., high: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class GateSpec(_message.Message):
    __slots__ = ("metric", "min", "max", "max_regression", "max_p99_latency_ms", "max_model_size_mb", "slice_min")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MAX_REGRESSION_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    SLICE_MIN_FIELD_NUMBER: _ClassVar[int]
    metric: str
    min: float
    max: float
    max_regression: float
    max_p99_latency_ms: float
    max_model_size_mb: float
    slice_min: float
    def __init__(self, metric: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., max_regression: _Optional[float] = ..., max_p99_latency_ms: _Optional[float] = ..., max_model_size_mb: _Optional[float] = ..., slice_min: _Optional[float] = ...) -> None: ...

class RolloutSpec(_message.Message):
    __slots__ = ("strategy", "steps", "step_seconds", "max_error_rate", "max_p99_latency_ms", "min_requests", "auto_promote", "max_prediction_drift", "health_timeout_seconds", "on_health_timeout")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    AUTO_PROMOTE_FIELD_NUMBER: _ClassVar[int]
    MAX_PREDICTION_DRIFT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ON_HEALTH_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    steps: _containers.RepeatedScalarFieldContainer[int]
    step_seconds: int
    max_error_rate: float
    max_p99_latency_ms: float
    min_requests: int
    auto_promote: bool
    max_prediction_drift: float
    health_timeout_seconds: int
    on_health_timeout: str
    def __init__(self, strategy: _Optional[str] = ..., steps: _Optional[_Iterable[int]] = ..., step_seconds: _Optional[int] = ..., max_error_rate: _Optional[float] = ..., max_p99_latency_ms: _Optional[float] = ..., min_requests: _Optional[int] = ..., auto_promote: _Optional[bool] = ..., max_prediction_drift: _Optional[float] = ..., health_timeout_seconds: _Optional[int] = ..., on_health_timeout: _Optional[str] = ...) -> None: ...

class MonitorSpec(_message.Message):
    __slots__ = ("window_seconds", "method", "threshold", "consecutive_windows", "on_drift", "on_degradation", "sampling_rate", "min_samples")
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    ON_DRIFT_FIELD_NUMBER: _ClassVar[int]
    ON_DEGRADATION_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_RATE_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    window_seconds: int
    method: str
    threshold: float
    consecutive_windows: int
    on_drift: str
    on_degradation: str
    sampling_rate: float
    min_samples: int
    def __init__(self, window_seconds: _Optional[int] = ..., method: _Optional[str] = ..., threshold: _Optional[float] = ..., consecutive_windows: _Optional[int] = ..., on_drift: _Optional[str] = ..., on_degradation: _Optional[str] = ..., sampling_rate: _Optional[float] = ..., min_samples: _Optional[int] = ...) -> None: ...

class ServingSpec(_message.Message):
    __slots__ = ("max_batch_size", "max_wait_us")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_US_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_wait_us: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_wait_us: _Optional[int] = ...) -> None: ...

class ModelSpecVersion(_message.Message):
    __slots__ = ("model", "version", "spec", "sha256", "applied_by", "applied_at")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    APPLIED_BY_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    spec: ModelSpec
    sha256: str
    applied_by: str
    applied_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., sha256: _Optional[str] = ..., applied_by: _Optional[str] = ..., applied_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ApplyModelSpecRequest(_message.Message):
    __slots__ = ("spec", "applied_by", "dry_run")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    APPLIED_BY_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    spec: ModelSpec
    applied_by: str
    dry_run: bool
    def __init__(self, spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., applied_by: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ApplyModelSpecResponse(_message.Message):
    __slots__ = ("spec_version", "changed", "applied")
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    spec_version: int
    changed: bool
    applied: ModelSpecVersion
    def __init__(self, spec_version: _Optional[int] = ..., changed: _Optional[bool] = ..., applied: _Optional[_Union[ModelSpecVersion, _Mapping]] = ...) -> None: ...

class GetModelSpecRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListModelSpecsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "dataset", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    dataset: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., dataset: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListModelSpecsResponse(_message.Message):
    __slots__ = ("specs", "next_page_token")
    SPECS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    specs: _containers.RepeatedCompositeFieldContainer[ModelSpecVersion]
    next_page_token: str
    def __init__(self, specs: _Optional[_Iterable[_Union[ModelSpecVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("name", "latest_version", "version_count", "created_at", "updated_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    latest_version: int
    version_count: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., latest_version: _Optional[int] = ..., version_count: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DatasetVersion(_message.Message):
    __slots__ = ("dataset", "version", "uri", "sha256", "format", "row_count", "columns", "parent_version", "parent_sha256", "committed_by", "labels", "committed_at", "recorded_at", "source_event_id", "retrain")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_BY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: int
    uri: str
    sha256: str
    format: str
    row_count: int
    columns: _containers.RepeatedCompositeFieldContainer[_common_pb2.Column]
    parent_version: int
    parent_sha256: str
    committed_by: str
    labels: _containers.ScalarMap[str, str]
    committed_at: _timestamp_pb2.Timestamp
    recorded_at: _timestamp_pb2.Timestamp
    source_event_id: str
    retrain: _data_pb2.RetrainIntent
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[int] = ..., uri: _Optional[str] = ..., sha256: _Optional[str] = ..., format: _Optional[str] = ..., row_count: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[_common_pb2.Column, _Mapping]]] = ..., parent_version: _Optional[int] = ..., parent_sha256: _Optional[str] = ..., committed_by: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., committed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_event_id: _Optional[str] = ..., retrain: _Optional[_Union[_data_pb2.RetrainIntent, _Mapping]] = ...) -> None: ...

class RecordDatasetVersionRequest(_message.Message):
    __slots__ = ("dataset", "uri", "sha256", "format", "row_count", "columns", "parent_sha256", "committed_by", "labels", "committed_at", "source_event_id", "retrain")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    PARENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_BY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    uri: str
    sha256: str
    format: str
    row_count: int
    columns: _containers.RepeatedCompositeFieldContainer[_common_pb2.Column]
    parent_sha256: str
    committed_by: str
    labels: _containers.ScalarMap[str, str]
    committed_at: _timestamp_pb2.Timestamp
    source_event_id: str
    retrain: _data_pb2.RetrainIntent
    def __init__(self, dataset: _Optional[str] = ..., uri: _Optional[str] = ..., sha256: _Optional[str] = ..., format: _Optional[str] = ..., row_count: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[_common_pb2.Column, _Mapping]]] = ..., parent_sha256: _Optional[str] = ..., committed_by: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., committed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_event_id: _Optional[str] = ..., retrain: _Optional[_Union[_data_pb2.RetrainIntent, _Mapping]] = ...) -> None: ...

class RecordDatasetVersionResponse(_message.Message):
    __slots__ = ("dataset_version", "created")
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    dataset_version: DatasetVersion
    created: bool
    def __init__(self, dataset_version: _Optional[_Union[DatasetVersion, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class RequestRetrainRequest(_message.Message):
    __slots__ = ("model", "dataset", "dataset_version", "reason", "requested_by")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    model: str
    dataset: str
    dataset_version: int
    reason: str
    requested_by: str
    def __init__(self, model: _Optional[str] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[int] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class RequestRetrainResponse(_message.Message):
    __slots__ = ("event_id", "model", "spec_version", "dataset", "dataset_version", "requested_by")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    model: str
    spec_version: int
    dataset: str
    dataset_version: int
    requested_by: str
    def __init__(self, event_id: _Optional[str] = ..., model: _Optional[str] = ..., spec_version: _Optional[int] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[int] = ..., requested_by: _Optional[str] = ...) -> None: ...

class GetDatasetVersionRequest(_message.Message):
    __slots__ = ("dataset", "version", "sha256")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: int
    sha256: str
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "name_prefix")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    name_prefix: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., name_prefix: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListDatasetVersionsRequest(_message.Message):
    __slots__ = ("dataset", "page_size", "page_token", "committed_after", "committed_before")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    page_size: int
    page_token: str
    committed_after: _timestamp_pb2.Timestamp
    committed_before: _timestamp_pb2.Timestamp
    def __init__(self, dataset: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., committed_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., committed_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListDatasetVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[DatasetVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[DatasetVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "datatype", "shape", "columns", "role", "onnx_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ONNX_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    columns: _containers.RepeatedScalarFieldContainer[str]
    role: str
    onnx_type: str
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., columns: _Optional[_Iterable[str]] = ..., role: _Optional[str] = ..., onnx_type: _Optional[str] = ...) -> None: ...

class ModelSignature(_message.Message):
    __slots__ = ("inputs", "outputs", "feature_names", "class_labels", "task", "onnx_opset", "categories")
    class CategoriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Vocabulary
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Vocabulary, _Mapping]] = ...) -> None: ...
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ONNX_OPSET_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    task: str
    onnx_opset: int
    categories: _containers.MessageMap[str, Vocabulary]
    def __init__(self, inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., feature_names: _Optional[_Iterable[str]] = ..., class_labels: _Optional[_Iterable[str]] = ..., task: _Optional[str] = ..., onnx_opset: _Optional[int] = ..., categories: _Optional[_Mapping[str, Vocabulary]] = ...) -> None: ...

class Vocabulary(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("model", "version", "run_id", "spec_version", "dataset", "dataset_version", "dataset_sha256", "artifact_uri", "artifact_sha256", "artifact_size_bytes", "profile_uri", "profile_sha256", "signature", "metrics", "tags", "aliases", "description", "created_at", "origin")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROFILE_URI_FIELD_NUMBER: _ClassVar[int]
    PROFILE_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    run_id: str
    spec_version: int
    dataset: str
    dataset_version: int
    dataset_sha256: str
    artifact_uri: str
    artifact_sha256: str
    artifact_size_bytes: int
    profile_uri: str
    profile_sha256: str
    signature: ModelSignature
    metrics: _containers.ScalarMap[str, float]
    tags: _containers.ScalarMap[str, str]
    aliases: _containers.RepeatedScalarFieldContainer[str]
    description: str
    created_at: _timestamp_pb2.Timestamp
    origin: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., run_id: _Optional[str] = ..., spec_version: _Optional[int] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[int] = ..., dataset_sha256: _Optional[str] = ..., artifact_uri: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., artifact_size_bytes: _Optional[int] = ..., profile_uri: _Optional[str] = ..., profile_sha256: _Optional[str] = ..., signature: _Optional[_Union[ModelSignature, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., tags: _Optional[_Mapping[str, str]] = ..., aliases: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., origin: _Optional[str] = ...) -> None: ...

class RegisterModelVersionRequest(_message.Message):
    __slots__ = ("model", "run_id", "spec_version", "dataset", "dataset_version", "dataset_sha256", "artifact_uri", "artifact_sha256", "artifact_size_bytes", "profile_uri", "profile_sha256", "signature", "metrics", "tags", "description")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROFILE_URI_FIELD_NUMBER: _ClassVar[int]
    PROFILE_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    run_id: str
    spec_version: int
    dataset: str
    dataset_version: int
    dataset_sha256: str
    artifact_uri: str
    artifact_sha256: str
    artifact_size_bytes: int
    profile_uri: str
    profile_sha256: str
    signature: ModelSignature
    metrics: _containers.ScalarMap[str, float]
    tags: _containers.ScalarMap[str, str]
    description: str
    def __init__(self, model: _Optional[str] = ..., run_id: _Optional[str] = ..., spec_version: _Optional[int] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[int] = ..., dataset_sha256: _Optional[str] = ..., artifact_uri: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., artifact_size_bytes: _Optional[int] = ..., profile_uri: _Optional[str] = ..., profile_sha256: _Optional[str] = ..., signature: _Optional[_Union[ModelSignature, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., tags: _Optional[_Mapping[str, str]] = ..., description: _Optional[str] = ...) -> None: ...

class RegisterModelVersionResponse(_message.Message):
    __slots__ = ("model_version", "created")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    model_version: ModelVersion
    created: bool
    def __init__(self, model_version: _Optional[_Union[ModelVersion, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetModelVersionRequest(_message.Message):
    __slots__ = ("model", "version", "alias")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    alias: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ...) -> None: ...

class ListModelVersionsRequest(_message.Message):
    __slots__ = ("model", "page_size", "page_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    page_size: int
    page_token: str
    def __init__(self, model: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelVersionsResponse(_message.Message):
    __slots__ = ("model_versions", "next_page_token")
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    next_page_token: str
    def __init__(self, model_versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class MetricFilter(_message.Message):
    __slots__ = ("metric", "comparison", "value")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    comparison: _common_pb2.Comparison
    value: float
    def __init__(self, metric: _Optional[str] = ..., comparison: _Optional[_Union[_common_pb2.Comparison, str]] = ..., value: _Optional[float] = ...) -> None: ...

class SearchModelVersionsRequest(_message.Message):
    __slots__ = ("models", "dataset", "dataset_version", "run_id", "tags", "metric_filters", "alias", "created_after", "created_before", "order_by", "page_size", "page_token")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FILTERS_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    dataset: str
    dataset_version: int
    run_id: str
    tags: _containers.ScalarMap[str, str]
    metric_filters: _containers.RepeatedCompositeFieldContainer[MetricFilter]
    alias: str
    created_after: _timestamp_pb2.Timestamp
    created_before: _timestamp_pb2.Timestamp
    order_by: str
    page_size: int
    page_token: str
    def __init__(self, models: _Optional[_Iterable[str]] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[int] = ..., run_id: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., metric_filters: _Optional[_Iterable[_Union[MetricFilter, _Mapping]]] = ..., alias: _Optional[str] = ..., created_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., order_by: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchModelVersionsResponse(_message.Message):
    __slots__ = ("model_versions", "next_page_token")
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    next_page_token: str
    def __init__(self, model_versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateModelVersionTagsRequest(_message.Message):
    __slots__ = ("model", "version", "set_tags", "remove_tags", "actor")
    class SetTagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SET_TAGS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_TAGS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    set_tags: _containers.ScalarMap[str, str]
    remove_tags: _containers.RepeatedScalarFieldContainer[str]
    actor: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., set_tags: _Optional[_Mapping[str, str]] = ..., remove_tags: _Optional[_Iterable[str]] = ..., actor: _Optional[str] = ...) -> None: ...

class Hardware(_message.Message):
    __slots__ = ("device", "accelerator", "accelerator_count", "cpu_count", "memory_bytes", "hostname", "software")
    class SoftwareEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_FIELD_NUMBER: _ClassVar[int]
    device: str
    accelerator: str
    accelerator_count: int
    cpu_count: int
    memory_bytes: int
    hostname: str
    software: _containers.ScalarMap[str, str]
    def __init__(self, device: _Optional[str] = ..., accelerator: _Optional[str] = ..., accelerator_count: _Optional[int] = ..., cpu_count: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., hostname: _Optional[str] = ..., software: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EpochMetrics(_message.Message):
    __slots__ = ("epoch", "metrics", "logged_at")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LOGGED_AT_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    metrics: _containers.ScalarMap[str, float]
    logged_at: _timestamp_pb2.Timestamp
    def __init__(self, epoch: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., logged_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "model", "spec_version", "dataset", "dataset_version", "dataset_sha256", "params", "status", "trigger", "trigger_event_id", "hardware", "started_at", "ended_at", "metrics", "history", "failed_stage", "error", "model_version", "parent_run_id", "tags", "artifacts", "source")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    FAILED_STAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    model: str
    spec_version: int
    dataset: str
    dataset_version: int
    dataset_sha256: str
    params: _containers.ScalarMap[str, str]
    status: RunStatus
    trigger: _common_pb2.TrainingTrigger
    trigger_event_id: str
    hardware: Hardware
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    metrics: _containers.ScalarMap[str, float]
    history: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    failed_stage: _training_pb2.TrainingStage
    error: str
    model_version: int
    parent_run_id: str
    tags: _containers.ScalarMap[str, str]
    artifacts: _containers.RepeatedCompositeFieldContainer[RunArtifact]
    source: str
    def __init__(self, run_id: _Optional[str] = ..., model: _Optional[str] = ..., spec_version: _Optional[int] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[int] = ..., dataset_sha256: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., status: _Optional[_Union[RunStatus, str]] = ..., trigger: _Optional[_Union[_common_pb2.TrainingTrigger, str]] = ..., trigger_event_id: _Optional[str] = ..., hardware: _Optional[_Union[Hardware, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., history: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ..., failed_stage: _Optional[_Union[_training_pb2.TrainingStage, str]] = ..., error: _Optional[str] = ..., model_version: _Optional[int] = ..., parent_run_id: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., artifacts: _Optional[_Iterable[_Union[RunArtifact, _Mapping]]] = ..., source: _Optional[str] = ...) -> None: ...

class RunArtifact(_message.Message):
    __slots__ = ("path", "uri", "sha256", "size_bytes", "created_at")
    PATH_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    path: str
    uri: str
    sha256: str
    size_bytes: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, path: _Optional[str] = ..., uri: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UploadRunArtifactRequest(_message.Message):
    __slots__ = ("header", "chunk")
    class Header(_message.Message):
        __slots__ = ("run_id", "path", "size_bytes", "sha256")
        RUN_ID_FIELD_NUMBER: _ClassVar[int]
        PATH_FIELD_NUMBER: _ClassVar[int]
        SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
        SHA256_FIELD_NUMBER: _ClassVar[int]
        run_id: str
        path: str
        size_bytes: int
        sha256: str
        def __init__(self, run_id: _Optional[str] = ..., path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadRunArtifactRequest.Header
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadRunArtifactRequest.Header, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UpdateRunRequest(_message.Message):
    __slots__ = ("run_id", "params", "set_tags", "remove_tags")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SetTagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SET_TAGS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_TAGS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    params: _containers.ScalarMap[str, str]
    set_tags: _containers.ScalarMap[str, str]
    remove_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., set_tags: _Optional[_Mapping[str, str]] = ..., remove_tags: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterModelRequest(_message.Message):
    __slots__ = ("header", "chunk")
    class Header(_message.Message):
        __slots__ = ("model", "dataset", "dataset_version", "label", "run_id", "tags", "description", "spec", "file_name", "size_bytes", "sha256")
        class TagsEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: str
            def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
        MODEL_FIELD_NUMBER: _ClassVar[int]
        DATASET_FIELD_NUMBER: _ClassVar[int]
        DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
        LABEL_FIELD_NUMBER: _ClassVar[int]
        RUN_ID_FIELD_NUMBER: _ClassVar[int]
        TAGS_FIELD_NUMBER: _ClassVar[int]
        DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
        SPEC_FIELD_NUMBER: _ClassVar[int]
        FILE_NAME_FIELD_NUMBER: _ClassVar[int]
        SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
        SHA256_FIELD_NUMBER: _ClassVar[int]
        model: str
        dataset: str
        dataset_version: int
        label: str
        run_id: str
        tags: _containers.ScalarMap[str, str]
        description: str
        spec: ModelSpec
        file_name: str
        size_bytes: int
        sha256: str
        def __init__(self, model: _Optional[str] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[int] = ..., label: _Optional[str] = ..., run_id: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., description: _Optional[str] = ..., spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., file_name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: RegisterModelRequest.Header
    chunk: bytes
    def __init__(self, header: _Optional[_Union[RegisterModelRequest.Header, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("model_version", "run_artifact")
    class ModelVersionArtifact(_message.Message):
        __slots__ = ("model", "version", "alias")
        MODEL_FIELD_NUMBER: _ClassVar[int]
        VERSION_FIELD_NUMBER: _ClassVar[int]
        ALIAS_FIELD_NUMBER: _ClassVar[int]
        model: str
        version: int
        alias: str
        def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ...) -> None: ...
    class RunArtifactRef(_message.Message):
        __slots__ = ("run_id", "path")
        RUN_ID_FIELD_NUMBER: _ClassVar[int]
        PATH_FIELD_NUMBER: _ClassVar[int]
        run_id: str
        path: str
        def __init__(self, run_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    model_version: DownloadArtifactRequest.ModelVersionArtifact
    run_artifact: DownloadArtifactRequest.RunArtifactRef
    def __init__(self, model_version: _Optional[_Union[DownloadArtifactRequest.ModelVersionArtifact, _Mapping]] = ..., run_artifact: _Optional[_Union[DownloadArtifactRequest.RunArtifactRef, _Mapping]] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("data", "size_bytes", "sha256", "uri")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size_bytes: int
    sha256: str
    uri: str
    def __init__(self, data: _Optional[bytes] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., uri: _Optional[str] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("run_id", "model", "spec_version", "dataset", "dataset_version", "dataset_sha256", "params", "trigger", "trigger_event_id", "hardware", "parent_run_id", "tags", "source")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    model: str
    spec_version: int
    dataset: str
    dataset_version: int
    dataset_sha256: str
    params: _containers.ScalarMap[str, str]
    trigger: _common_pb2.TrainingTrigger
    trigger_event_id: str
    hardware: Hardware
    parent_run_id: str
    tags: _containers.ScalarMap[str, str]
    source: str
    def __init__(self, run_id: _Optional[str] = ..., model: _Optional[str] = ..., spec_version: _Optional[int] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[int] = ..., dataset_sha256: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., trigger: _Optional[_Union[_common_pb2.TrainingTrigger, str]] = ..., trigger_event_id: _Optional[str] = ..., hardware: _Optional[_Union[Hardware, _Mapping]] = ..., parent_run_id: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., source: _Optional[str] = ...) -> None: ...

class LogRunMetricsRequest(_message.Message):
    __slots__ = ("run_id", "epochs")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    epochs: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    def __init__(self, run_id: _Optional[str] = ..., epochs: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ...) -> None: ...

class LogRunMetricsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FinishRunRequest(_message.Message):
    __slots__ = ("run_id", "status", "metrics", "failed_stage", "error", "model_version")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FAILED_STAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status: RunStatus
    metrics: _containers.ScalarMap[str, float]
    failed_stage: _training_pb2.TrainingStage
    error: str
    model_version: int
    def __init__(self, run_id: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., failed_stage: _Optional[_Union[_training_pb2.TrainingStage, str]] = ..., error: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id", "include_history")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    include_history: bool
    def __init__(self, run_id: _Optional[str] = ..., include_history: _Optional[bool] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("model", "status", "dataset", "dataset_version", "started_after", "started_before", "page_size", "page_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    STARTED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    status: RunStatus
    dataset: str
    dataset_version: int
    started_after: _timestamp_pb2.Timestamp
    started_before: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, model: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[int] = ..., started_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("evaluation_id", "model", "version", "champion_version", "passed", "metrics", "champion_metrics", "gates", "slices", "latency_p50_ms", "latency_p99_ms", "model_size_bytes", "dataset", "dataset_version", "dataset_sha256", "row_count", "spec_version", "primary_metric", "evaluated_at", "recorded_at")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ChampionMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_VERSION_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_METRICS_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_METRIC_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_AT_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    model: str
    version: int
    champion_version: int
    passed: bool
    metrics: _containers.ScalarMap[str, float]
    champion_metrics: _containers.ScalarMap[str, float]
    gates: _containers.RepeatedCompositeFieldContainer[_evaluation_pb2.GateResult]
    slices: _containers.RepeatedCompositeFieldContainer[_evaluation_pb2.SliceMetrics]
    latency_p50_ms: float
    latency_p99_ms: float
    model_size_bytes: int
    dataset: str
    dataset_version: int
    dataset_sha256: str
    row_count: int
    spec_version: int
    primary_metric: str
    evaluated_at: _timestamp_pb2.Timestamp
    recorded_at: _timestamp_pb2.Timestamp
    def __init__(self, evaluation_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., champion_version: _Optional[int] = ..., passed: _Optional[bool] = ..., metrics: _Optional[_Mapping[str, float]] = ..., champion_metrics: _Optional[_Mapping[str, float]] = ..., gates: _Optional[_Iterable[_Union[_evaluation_pb2.GateResult, _Mapping]]] = ..., slices: _Optional[_Iterable[_Union[_evaluation_pb2.SliceMetrics, _Mapping]]] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., model_size_bytes: _Optional[int] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[int] = ..., dataset_sha256: _Optional[str] = ..., row_count: _Optional[int] = ..., spec_version: _Optional[int] = ..., primary_metric: _Optional[str] = ..., evaluated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordEvaluationRequest(_message.Message):
    __slots__ = ("evaluation",)
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    evaluation: Evaluation
    def __init__(self, evaluation: _Optional[_Union[Evaluation, _Mapping]] = ...) -> None: ...

class RecordEvaluationResponse(_message.Message):
    __slots__ = ("evaluation", "created")
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    evaluation: Evaluation
    created: bool
    def __init__(self, evaluation: _Optional[_Union[Evaluation, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetEvaluationRequest(_message.Message):
    __slots__ = ("evaluation_id",)
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    def __init__(self, evaluation_id: _Optional[str] = ...) -> None: ...

class ListEvaluationsRequest(_message.Message):
    __slots__ = ("model", "version", "passed", "page_size", "page_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    passed: bool
    page_size: int
    page_token: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., passed: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEvaluationsResponse(_message.Message):
    __slots__ = ("evaluations", "next_page_token")
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    evaluations: _containers.RepeatedCompositeFieldContainer[Evaluation]
    next_page_token: str
    def __init__(self, evaluations: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Alias(_message.Message):
    __slots__ = ("model", "alias", "version", "updated_by", "reason", "updated_at")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    alias: str
    version: int
    updated_by: str
    reason: str
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ..., updated_by: _Optional[str] = ..., reason: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AliasChange(_message.Message):
    __slots__ = ("change_id", "model", "alias", "from_version", "to_version", "actor", "reason", "changed_at")
    CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    change_id: int
    model: str
    alias: str
    from_version: int
    to_version: int
    actor: str
    reason: str
    changed_at: _timestamp_pb2.Timestamp
    def __init__(self, change_id: _Optional[int] = ..., model: _Optional[str] = ..., alias: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("model", "alias", "version", "actor", "reason", "expected_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    alias: str
    version: int
    actor: str
    reason: str
    expected_version: int
    def __init__(self, model: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class SetAliasResponse(_message.Message):
    __slots__ = ("alias", "previous_version", "changed", "change_id")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    alias: Alias
    previous_version: int
    changed: bool
    change_id: int
    def __init__(self, alias: _Optional[_Union[Alias, _Mapping]] = ..., previous_version: _Optional[int] = ..., changed: _Optional[bool] = ..., change_id: _Optional[int] = ...) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ("model", "alias", "actor", "reason", "expected_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    alias: str
    actor: str
    reason: str
    expected_version: int
    def __init__(self, model: _Optional[str] = ..., alias: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DeleteAliasResponse(_message.Message):
    __slots__ = ("previous_version", "deleted", "change_id")
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    previous_version: int
    deleted: bool
    change_id: int
    def __init__(self, previous_version: _Optional[int] = ..., deleted: _Optional[bool] = ..., change_id: _Optional[int] = ...) -> None: ...

class ListAliasesRequest(_message.Message):
    __slots__ = ("model", "page_size", "page_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    page_size: int
    page_token: str
    def __init__(self, model: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAliasesResponse(_message.Message):
    __slots__ = ("aliases", "next_page_token")
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    aliases: _containers.RepeatedCompositeFieldContainer[Alias]
    next_page_token: str
    def __init__(self, aliases: _Optional[_Iterable[_Union[Alias, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetAliasHistoryRequest(_message.Message):
    __slots__ = ("model", "alias", "at", "page_size", "page_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    alias: str
    at: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, model: _Optional[str] = ..., alias: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetAliasHistoryResponse(_message.Message):
    __slots__ = ("changes", "aliases_at", "next_page_token")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    ALIASES_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[AliasChange]
    aliases_at: _containers.RepeatedCompositeFieldContainer[Alias]
    next_page_token: str
    def __init__(self, changes: _Optional[_Iterable[_Union[AliasChange, _Mapping]]] = ..., aliases_at: _Optional[_Iterable[_Union[Alias, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("rollout_id", "model", "version", "baseline_version", "strategy", "state", "traffic_percent", "generation", "actor", "reason", "started_at", "updated_at", "finished_at")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_PERCENT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    model: str
    version: int
    baseline_version: int
    strategy: str
    state: _deployment_pb2.RolloutState
    traffic_percent: int
    generation: int
    actor: str
    reason: str
    started_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, rollout_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., baseline_version: _Optional[int] = ..., strategy: _Optional[str] = ..., state: _Optional[_Union[_deployment_pb2.RolloutState, str]] = ..., traffic_percent: _Optional[int] = ..., generation: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordDeploymentRequest(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class RecordDeploymentResponse(_message.Message):
    __slots__ = ("deployment", "created")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    created: bool
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ("model", "version", "state", "started_after", "started_before", "page_size", "page_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    STARTED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    state: _deployment_pb2.RolloutState
    started_after: _timestamp_pb2.Timestamp
    started_before: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[_deployment_pb2.RolloutState, str]] = ..., started_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments", "next_page_token")
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    next_page_token: str
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetLineageRequest(_message.Message):
    __slots__ = ("model", "version", "alias", "max_dataset_ancestors")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    MAX_DATASET_ANCESTORS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    alias: str
    max_dataset_ancestors: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ..., max_dataset_ancestors: _Optional[int] = ...) -> None: ...

class GetLineageResponse(_message.Message):
    __slots__ = ("model_version", "spec", "dataset_version", "dataset_ancestors", "run", "evaluations", "deployments", "alias_changes", "drift_events", "degradations")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_ANCESTORS_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    ALIAS_CHANGES_FIELD_NUMBER: _ClassVar[int]
    DRIFT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    DEGRADATIONS_FIELD_NUMBER: _ClassVar[int]
    model_version: ModelVersion
    spec: ModelSpecVersion
    dataset_version: DatasetVersion
    dataset_ancestors: _containers.RepeatedCompositeFieldContainer[DatasetVersion]
    run: Run
    evaluations: _containers.RepeatedCompositeFieldContainer[Evaluation]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    alias_changes: _containers.RepeatedCompositeFieldContainer[AliasChange]
    drift_events: _containers.RepeatedCompositeFieldContainer[_monitoring_pb2.DriftDetected]
    degradations: _containers.RepeatedCompositeFieldContainer[_monitoring_pb2.PerformanceDegraded]
    def __init__(self, model_version: _Optional[_Union[ModelVersion, _Mapping]] = ..., spec: _Optional[_Union[ModelSpecVersion, _Mapping]] = ..., dataset_version: _Optional[_Union[DatasetVersion, _Mapping]] = ..., dataset_ancestors: _Optional[_Iterable[_Union[DatasetVersion, _Mapping]]] = ..., run: _Optional[_Union[Run, _Mapping]] = ..., evaluations: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ..., deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ..., alias_changes: _Optional[_Iterable[_Union[AliasChange, _Mapping]]] = ..., drift_events: _Optional[_Iterable[_Union[_monitoring_pb2.DriftDetected, _Mapping]]] = ..., degradations: _Optional[_Iterable[_Union[_monitoring_pb2.PerformanceDegraded, _Mapping]]] = ...) -> None: ...
