from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf.internal import python_message as _python_message
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Level(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOW: _ClassVar[Level]
    HIGH: _ClassVar[Level]
LOW: Level
HIGH: Level
NOTE_FIELD_NUMBER: _ClassVar[int]
note: _descriptor.FieldDescriptor

class Legacy(_message.Message):
    __slots__ = ("level", "levels", "x", "sub", "name", "subs")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    SUB_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUBS_FIELD_NUMBER: _ClassVar[int]
    level: Level
    levels: _containers.RepeatedScalarFieldContainer[Level]
    x: int
    sub: Legacy
    name: str
    subs: _containers.RepeatedCompositeFieldContainer[Legacy]
    def __init__(self, level: _Optional[_Union[Level, str]] = ..., levels: _Optional[_Iterable[_Union[Level, str]]] = ..., x: _Optional[int] = ..., sub: _Optional[_Union[Legacy, _Mapping]] = ..., name: _Optional[str] = ..., subs: _Optional[_Iterable[_Union[Legacy, _Mapping]]] = ...) -> None: ...

class Extendable(_message.Message):
    __slots__ = ("a",)
    Extensions: _python_message._ExtensionDict
    A_FIELD_NUMBER: _ClassVar[int]
    a: int
    def __init__(self, a: _Optional[int] = ...) -> None: ...
