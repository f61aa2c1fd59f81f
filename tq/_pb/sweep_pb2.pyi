from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SweepTask(_message.Message):
    __slots__ = ("store", "partition", "shard_index", "shard_count", "level", "lessor_id")
    STORE_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LESSOR_ID_FIELD_NUMBER: _ClassVar[int]
    store: str
    partition: str
    shard_index: int
    shard_count: int
    level: int
    lessor_id: str
    def __init__(self, store: _Optional[str] = ..., partition: _Optional[str] = ..., shard_index: _Optional[int] = ..., shard_count: _Optional[int] = ..., level: _Optional[int] = ..., lessor_id: _Optional[str] = ...) -> None: ...
