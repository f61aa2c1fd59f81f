from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Greet(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Count(_message.Message):
    __slots__ = ("n", "tag")
    N_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    n: int
    tag: str
    def __init__(self, n: _Optional[int] = ..., tag: _Optional[str] = ...) -> None: ...

class Blob(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class Fail(_message.Message):
    __slots__ = ("how",)
    HOW_FIELD_NUMBER: _ClassVar[int]
    how: str
    def __init__(self, how: _Optional[str] = ...) -> None: ...
