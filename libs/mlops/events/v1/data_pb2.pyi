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

class DataCommitted(_message.Message):
    __slots__ = ("dataset", "uri", "sha256", "format", "committed_by", "row_count", "parent_sha256", "labels", "committed_at", "retrain")
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
    COMMITTED_BY_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    uri: str
    sha256: str
    format: str
    committed_by: str
    row_count: int
    parent_sha256: str
    labels: _containers.ScalarMap[str, str]
    committed_at: _timestamp_pb2.Timestamp
    retrain: RetrainIntent
    def __init__(self, dataset: _Optional[str] = ..., uri: _Optional[str] = ..., sha256: _Optional[str] = ..., format: _Optional[str] = ..., committed_by: _Optional[str] = ..., row_count: _Optional[int] = ..., parent_sha256: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., committed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retrain: _Optional[_Union[RetrainIntent, _Mapping]] = ...) -> None: ...

class RetrainIntent(_message.Message):
    __slots__ = ("model", "model_version", "trigger", "reason", "cause_event_id", "window", "requested_by")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CAUSE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: int
    trigger: _common_pb2.TrainingTrigger
    reason: str
    cause_event_id: str
    window: _common_pb2.TimeWindow
    requested_by: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[int] = ..., trigger: _Optional[_Union[_common_pb2.TrainingTrigger, str]] = ..., reason: _Optional[str] = ..., cause_event_id: _Optional[str] = ..., window: _Optional[_Union[_common_pb2.TimeWindow, _Mapping]] = ..., requested_by: _Optional[str] = ...) -> None: ...

class DatasetVersionRecorded(_message.Message):
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
    retrain: RetrainIntent
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[int] = ..., uri: _Optional[str] = ..., sha256: _Optional[str] = ..., format: _Optional[str] = ..., row_count: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[_common_pb2.Column, _Mapping]]] = ..., parent_version: _Optional[int] = ..., parent_sha256: _Optional[str] = ..., committed_by: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., committed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_event_id: _Optional[str] = ..., retrain: _Optional[_Union[RetrainIntent, _Mapping]] = ...) -> None: ...
