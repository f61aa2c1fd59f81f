from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DjangoTask(_message.Message):
    __slots__ = ("task_path", "result_id", "args_json", "kwargs_json", "backend", "queue_name", "priority", "results_database", "enqueued_us", "run_after_us")
    TASK_PATH_FIELD_NUMBER: _ClassVar[int]
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    KWARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    QUEUE_NAME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RESULTS_DATABASE_FIELD_NUMBER: _ClassVar[int]
    ENQUEUED_US_FIELD_NUMBER: _ClassVar[int]
    RUN_AFTER_US_FIELD_NUMBER: _ClassVar[int]
    task_path: str
    result_id: str
    args_json: str
    kwargs_json: str
    backend: str
    queue_name: str
    priority: int
    results_database: str
    enqueued_us: int
    run_after_us: int
    def __init__(self, task_path: _Optional[str] = ..., result_id: _Optional[str] = ..., args_json: _Optional[str] = ..., kwargs_json: _Optional[str] = ..., backend: _Optional[str] = ..., queue_name: _Optional[str] = ..., priority: _Optional[int] = ..., results_database: _Optional[str] = ..., enqueued_us: _Optional[int] = ..., run_after_us: _Optional[int] = ...) -> None: ...
