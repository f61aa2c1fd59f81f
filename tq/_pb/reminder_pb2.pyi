import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReminderPayload(_message.Message):
    __slots__ = ("task_class", "created", "create_task_request", "publish_request")
    TASK_CLASS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TASK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_REQUEST_FIELD_NUMBER: _ClassVar[int]
    task_class: str
    created: _timestamp_pb2.Timestamp
    create_task_request: bytes
    publish_request: bytes
    def __init__(self, task_class: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_task_request: _Optional[bytes] = ..., publish_request: _Optional[bytes] = ...) -> None: ...

class ReminderExtra(_message.Message):
    __slots__ = ("parked_reason", "parked_code", "parked_at")
    PARKED_REASON_FIELD_NUMBER: _ClassVar[int]
    PARKED_CODE_FIELD_NUMBER: _ClassVar[int]
    PARKED_AT_FIELD_NUMBER: _ClassVar[int]
    parked_reason: str
    parked_code: str
    parked_at: _timestamp_pb2.Timestamp
    def __init__(self, parked_reason: _Optional[str] = ..., parked_code: _Optional[str] = ..., parked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
