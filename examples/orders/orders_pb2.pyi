from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SendConfirmation(_message.Message):
    __slots__ = ("order_id", "email")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    order_id: int
    email: str
    def __init__(self, order_id: _Optional[int] = ..., email: _Optional[str] = ...) -> None: ...

class CountDown(_message.Message):
    __slots__ = ("n", "chain")
    N_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    n: int
    chain: str
    def __init__(self, n: _Optional[int] = ..., chain: _Optional[str] = ...) -> None: ...

class DailyReport(_message.Message):
    __slots__ = ("day",)
    DAY_FIELD_NUMBER: _ClassVar[int]
    day: str
    def __init__(self, day: _Optional[str] = ...) -> None: ...
