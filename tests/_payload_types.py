"""One payload of every registrable well-known protobuf type, for the push-path tests.

Each is registered as its own task class by `register_all`; the handler
records what it got. The envelope's `body` of each is the payload's proto
JSON, whatever its kind: a string, a number, a boolean, a list, null or an
object.
"""

from __future__ import annotations

import threading

from google.protobuf import (
    any_pb2,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.message import Message

import tq
from tests.testpb import payloads_pb2 as pb


def _any() -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(pb.Greet(name="packed"))
    return a


def _struct() -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({"a": 1.5, "b": [True, None, "x"], "c": {"d": "e"}})
    return s


def _list() -> struct_pb2.ListValue:
    v = struct_pb2.ListValue()
    v.extend([1.0, "two", None, {"three": 3.0}])
    return v


# id -> a payload whose JSON kind is the point of the case.
SAMPLES: dict[str, Message] = {
    "string-value": wrappers_pb2.StringValue(value="x y \u00e9"),
    "string-value-empty": wrappers_pb2.StringValue(),
    "bytes-value": wrappers_pb2.BytesValue(value=b"\x00\xff\x10"),
    "int32-value": wrappers_pb2.Int32Value(value=-7),
    "int64-value": wrappers_pb2.Int64Value(value=-(2**62)),
    "uint32-value": wrappers_pb2.UInt32Value(value=2**32 - 1),
    "uint64-value": wrappers_pb2.UInt64Value(value=2**64 - 1),
    "float-value": wrappers_pb2.FloatValue(value=1.5),
    "double-value": wrappers_pb2.DoubleValue(value=-2.25),
    "bool-value": wrappers_pb2.BoolValue(value=True),
    "bool-value-false": wrappers_pb2.BoolValue(value=False),
    "timestamp": timestamp_pb2.Timestamp(seconds=1_767_225_600, nanos=123_000_000),
    "duration": duration_pb2.Duration(seconds=90, nanos=500_000_000),
    "value-number": struct_pb2.Value(number_value=3.5),
    "value-null": struct_pb2.Value(null_value=struct_pb2.NULL_VALUE),
    "value-list": struct_pb2.Value(list_value=_list()),
    "list-value": _list(),
    "struct": _struct(),
    "field-mask": field_mask_pb2.FieldMask(paths=["a.b", "c_d"]),
    "any": _any(),
    "empty": empty_pb2.Empty(),
}

# A message type can back one task class per dispatcher: one class per type.
TYPES: dict[type[Message], str] = {}
for _id, _payload in SAMPLES.items():
    TYPES.setdefault(type(_payload), f"wkt-{type(_payload).DESCRIPTOR.name}")


class Received:
    """What the handlers of `register_all` got, by class ID."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.payloads: dict[str, list[Message]] = {}

    def record(self, class_id: str, payload: Message) -> None:
        with self._lock:
            self.payloads.setdefault(class_id, []).append(payload)

    def of(self, class_id: str) -> list[Message]:
        with self._lock:
            return list(self.payloads.get(class_id, ()))


def register_all(disp: tq.Dispatcher, queue: str) -> Received:
    """Registers one task class per well-known type on `disp`, in `queue`."""
    received = Received()
    for cls, class_id in TYPES.items():

        def handler(payload: Message, class_id: str = class_id) -> None:
            received.record(class_id, payload)

        disp.task_class(id=class_id, prototype=cls, kind=tq.Kind.FOLLOWS_CONTEXT, queue=queue)(
            handler
        )
    return received


def class_of(sample: str) -> str:
    return TYPES[type(SAMPLES[sample])]
