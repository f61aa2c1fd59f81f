import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import wrappers_pb2 as _wrappers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Color(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLOR_UNSPECIFIED: _ClassVar[Color]
    RED: _ClassVar[Color]
    GREEN: _ClassVar[Color]
COLOR_UNSPECIFIED: Color
RED: Color
GREEN: Color

class Inner(_message.Message):
    __slots__ = ("a", "s", "ns", "child", "color")
    A_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    NS_FIELD_NUMBER: _ClassVar[int]
    CHILD_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    a: int
    s: str
    ns: _containers.RepeatedScalarFieldContainer[int]
    child: Inner
    color: Color
    def __init__(self, a: _Optional[int] = ..., s: _Optional[str] = ..., ns: _Optional[_Iterable[int]] = ..., child: _Optional[_Union[Inner, _Mapping]] = ..., color: _Optional[_Union[Color, str]] = ...) -> None: ...

class AllKinds(_message.Message):
    __slots__ = ("i32", "i64", "u32", "u64", "s32", "s64", "f32", "f64", "sf32", "sf64", "fl", "db", "flag", "text", "data", "color", "inner", "r_i32", "r_i64", "r_text", "r_data", "r_color", "r_inner", "r_db", "r_flag", "r_fl", "r_u64", "opt_i32", "opt_text", "opt_color", "c_text", "c_num", "c_inner", "snake_case_name", "custom")
    I32_FIELD_NUMBER: _ClassVar[int]
    I64_FIELD_NUMBER: _ClassVar[int]
    U32_FIELD_NUMBER: _ClassVar[int]
    U64_FIELD_NUMBER: _ClassVar[int]
    S32_FIELD_NUMBER: _ClassVar[int]
    S64_FIELD_NUMBER: _ClassVar[int]
    F32_FIELD_NUMBER: _ClassVar[int]
    F64_FIELD_NUMBER: _ClassVar[int]
    SF32_FIELD_NUMBER: _ClassVar[int]
    SF64_FIELD_NUMBER: _ClassVar[int]
    FL_FIELD_NUMBER: _ClassVar[int]
    DB_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    INNER_FIELD_NUMBER: _ClassVar[int]
    R_I32_FIELD_NUMBER: _ClassVar[int]
    R_I64_FIELD_NUMBER: _ClassVar[int]
    R_TEXT_FIELD_NUMBER: _ClassVar[int]
    R_DATA_FIELD_NUMBER: _ClassVar[int]
    R_COLOR_FIELD_NUMBER: _ClassVar[int]
    R_INNER_FIELD_NUMBER: _ClassVar[int]
    R_DB_FIELD_NUMBER: _ClassVar[int]
    R_FLAG_FIELD_NUMBER: _ClassVar[int]
    R_FL_FIELD_NUMBER: _ClassVar[int]
    R_U64_FIELD_NUMBER: _ClassVar[int]
    OPT_I32_FIELD_NUMBER: _ClassVar[int]
    OPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    OPT_COLOR_FIELD_NUMBER: _ClassVar[int]
    C_TEXT_FIELD_NUMBER: _ClassVar[int]
    C_NUM_FIELD_NUMBER: _ClassVar[int]
    C_INNER_FIELD_NUMBER: _ClassVar[int]
    SNAKE_CASE_NAME_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    i32: int
    i64: int
    u32: int
    u64: int
    s32: int
    s64: int
    f32: int
    f64: int
    sf32: int
    sf64: int
    fl: float
    db: float
    flag: bool
    text: str
    data: bytes
    color: Color
    inner: Inner
    r_i32: _containers.RepeatedScalarFieldContainer[int]
    r_i64: _containers.RepeatedScalarFieldContainer[int]
    r_text: _containers.RepeatedScalarFieldContainer[str]
    r_data: _containers.RepeatedScalarFieldContainer[bytes]
    r_color: _containers.RepeatedScalarFieldContainer[Color]
    r_inner: _containers.RepeatedCompositeFieldContainer[Inner]
    r_db: _containers.RepeatedScalarFieldContainer[float]
    r_flag: _containers.RepeatedScalarFieldContainer[bool]
    r_fl: _containers.RepeatedScalarFieldContainer[float]
    r_u64: _containers.RepeatedScalarFieldContainer[int]
    opt_i32: int
    opt_text: str
    opt_color: Color
    c_text: str
    c_num: int
    c_inner: Inner
    snake_case_name: str
    custom: str
    def __init__(self, i32: _Optional[int] = ..., i64: _Optional[int] = ..., u32: _Optional[int] = ..., u64: _Optional[int] = ..., s32: _Optional[int] = ..., s64: _Optional[int] = ..., f32: _Optional[int] = ..., f64: _Optional[int] = ..., sf32: _Optional[int] = ..., sf64: _Optional[int] = ..., fl: _Optional[float] = ..., db: _Optional[float] = ..., flag: _Optional[bool] = ..., text: _Optional[str] = ..., data: _Optional[bytes] = ..., color: _Optional[_Union[Color, str]] = ..., inner: _Optional[_Union[Inner, _Mapping]] = ..., r_i32: _Optional[_Iterable[int]] = ..., r_i64: _Optional[_Iterable[int]] = ..., r_text: _Optional[_Iterable[str]] = ..., r_data: _Optional[_Iterable[bytes]] = ..., r_color: _Optional[_Iterable[_Union[Color, str]]] = ..., r_inner: _Optional[_Iterable[_Union[Inner, _Mapping]]] = ..., r_db: _Optional[_Iterable[float]] = ..., r_flag: _Optional[_Iterable[bool]] = ..., r_fl: _Optional[_Iterable[float]] = ..., r_u64: _Optional[_Iterable[int]] = ..., opt_i32: _Optional[int] = ..., opt_text: _Optional[str] = ..., opt_color: _Optional[_Union[Color, str]] = ..., c_text: _Optional[str] = ..., c_num: _Optional[int] = ..., c_inner: _Optional[_Union[Inner, _Mapping]] = ..., snake_case_name: _Optional[str] = ..., custom: _Optional[str] = ...) -> None: ...

class WithExtras(_message.Message):
    __slots__ = ("name", "counts", "when", "doc", "maybe", "nothing", "inner")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    WHEN_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    MAYBE_FIELD_NUMBER: _ClassVar[int]
    NOTHING_FIELD_NUMBER: _ClassVar[int]
    INNER_FIELD_NUMBER: _ClassVar[int]
    name: str
    counts: _containers.ScalarMap[str, int]
    when: _timestamp_pb2.Timestamp
    doc: _struct_pb2.Struct
    maybe: _wrappers_pb2.Int32Value
    nothing: _struct_pb2.NullValue
    inner: Inner
    def __init__(self, name: _Optional[str] = ..., counts: _Optional[_Mapping[str, int]] = ..., when: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., doc: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., maybe: _Optional[_Union[_wrappers_pb2.Int32Value, _Mapping]] = ..., nothing: _Optional[_Union[_struct_pb2.NullValue, str]] = ..., inner: _Optional[_Union[Inner, _Mapping]] = ...) -> None: ...

class HoldsExtras(_message.Message):
    __slots__ = ("n", "extras")
    N_FIELD_NUMBER: _ClassVar[int]
    EXTRAS_FIELD_NUMBER: _ClassVar[int]
    n: int
    extras: WithExtras
    def __init__(self, n: _Optional[int] = ..., extras: _Optional[_Union[WithExtras, _Mapping]] = ...) -> None: ...
