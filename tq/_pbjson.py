"""Protobuf's JSON mapping for task payloads, without json_format's per-call cost.

`to_json(msg)` is `json_format.MessageToJson(msg, indent=None)` and
`from_dict(js, cls)` is `json_format.ParseDict(js, cls(), ignore_unknown_fields=True)`,
with the same output and the same acceptance, for messages made of scalars,
enums, bytes, strings, repeated fields of those, nested messages of the same
kind, oneofs and proto3 `optional` fields. Each message type gets a plan once
(what to do with each field), cached by type.

Everything else goes to json_format itself, so the result is always
json_format's: a message type with maps, well-known types (Any, Struct,
Timestamp, wrappers...), `NullValue`, groups, extensions or enums with custom
JSON names is never taken on the fast path; and a value the fast path has
any doubt about (an int given as a float, an unknown enum name, a float
string "nan", a field named twice by its two names, nesting past
json_format's depth limit, a value the message refuses...) sends the whole
message to json_format, which accepts it or raises its own error. The
scalar fields' converters are in `tq._pbjson_scalars`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from tq._pbjson_scalars import (
    Fallback,
    dec_bool,
    dec_bytes,
    dec_double,
    dec_float,
    dec_int,
    dec_string,
    enc_bytes,
    enc_double,
    enc_float,
    repeated,
    repeated_out,
)

# json_format's own limits and patterns.
_MAX_DEPTH = 100
_WELL_KNOWN = frozenset(
    {
        "google.protobuf.Any",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.ListValue",
        "google.protobuf.Struct",
        "google.protobuf.Timestamp",
        "google.protobuf.Value",
    }
)

_INT64 = frozenset({FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64})
_INT32 = frozenset({FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32})


def _dumps() -> Callable[[Any], str]:
    """`json.dumps` with its default options, without making an encoder per call.

    `json.dumps` builds a new C encoder each time, which costs twice the
    encoding of a small payload. This keeps one. No circular-reference check:
    the values come from `_encode`, which never makes a cycle.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return json.dumps
    encoder = make(
        None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None,
        ": ", ", ", False, False, True,
    )  # fmt: skip
    return lambda value: "".join(encoder(value, 0))


_json_dumps = _dumps()


def to_json(msg: Message) -> str:
    """`json_format.MessageToJson(msg, indent=None)`, byte for byte."""
    plan = _plan(type(msg))
    if plan.fast:
        try:
            return _json_dumps(_encode(msg, plan))
        except Exception:  # the fast path's doubts: json_format decides (or raises)
            pass
    return json_format.MessageToJson(msg, indent=None)


def from_dict(js: dict[str, Any], cls: type[Message]) -> Message:
    """`json_format.ParseDict(js, cls(), ignore_unknown_fields=True)`.

    Raises what json_format raises (ParseError, and the odd ValueError,
    TypeError, OverflowError or RecursionError) when it refuses `js`.
    """
    plan = _plan(cls)
    if plan.fast and type(js) is dict:
        try:
            return _decode(js, plan, 1)
        except Exception:  # the fast path's doubts and refusals alike
            pass
    msg = cls()
    json_format.ParseDict(js, msg, ignore_unknown_fields=True)
    return msg


# A field on the way in: (attribute name, converter or None for "as is",
# oneof name or None, whether another key names the same field).
_In = tuple[str, "Callable[[Any, int], Any] | None", "str | None", bool]
# On the way out: (JSON name, converter or None for "as is").
_Out = tuple[str, "Callable[[Any], Any] | None"]


class _Plan:
    __slots__ = ("cls", "fast", "keys", "out")

    def __init__(self, cls: type[Message]) -> None:
        self.cls = cls
        self.fast = False
        self.keys: dict[str, _In] = {}
        self.out: dict[FieldDescriptor, _Out] = {}


_plans: dict[type[Message], _Plan] = {}
_plans_lock = threading.Lock()


def _plan(cls: type[Message]) -> _Plan:
    plan = _plans.get(cls)
    if plan is None:
        with _plans_lock:
            plan = _plans.get(cls)
            if plan is None:
                plan = _compile(cls)
                _plans[cls] = plan
    return plan


def _compile(cls: type[Message]) -> _Plan:
    plan = _Plan(cls)
    desc: Descriptor = cls.DESCRIPTOR  # type: ignore[assignment]  # upb's is the same
    if not _plain(desc):
        return plan
    oneof_names = {o.name for o in desc.oneofs}
    fields: list[tuple[FieldDescriptor, _In]] = []
    for f in desc.fields:
        if f.name in oneof_names or f.json_name in oneof_names:
            return plan  # json_format mixes such names up; let it
        conv = _converters(f)
        if conv is None:
            return plan
        dec, enc = conv
        oneof = f.containing_oneof.name if f.containing_oneof is not None else None
        fields.append((f, (f.name, dec, oneof, f.json_name != f.name)))
        plan.out[f] = (f.json_name, enc)
    # Both names are accepted; the JSON name wins a clash, as in json_format.
    plan.keys = {f.name: entry for f, entry in fields}
    plan.keys.update((f.json_name, entry) for f, entry in fields)
    plan.fast = True
    return plan


def _plain(desc: Descriptor | None) -> bool:
    """A message json_format treats field by field (no special JSON form)."""
    return desc is not None and not (
        desc.full_name in _WELL_KNOWN
        or desc.file.name == "google/protobuf/wrappers.proto"
        or desc.is_extendable
        or desc.GetOptions().map_entry
    )


def _converters(
    f: FieldDescriptor,
) -> tuple[Callable[[Any, int], Any] | None, Callable[[Any], Any] | None] | None:
    """(decode, encode) for field `f`, None for "as is"; None if `f` is not for the fast path."""
    if f.type == FieldDescriptor.TYPE_GROUP:
        return None
    cpp = f.cpp_type
    dec: Callable[[Any, int], Any] | None
    enc: Callable[[Any], Any] | None
    if cpp == FieldDescriptor.CPPTYPE_MESSAGE:
        sub = f.message_type
        if sub is None or not _plain(sub):
            return None
        dec, enc = _message_converters(message_factory.GetMessageClass(sub))
    elif cpp == FieldDescriptor.CPPTYPE_ENUM:
        enum = f.enum_type
        if enum is None or enum.full_name == "google.protobuf.NullValue":
            return None
        if _custom_enum_names(enum):
            return None
        dec, enc = _enum_converters(enum)
    elif cpp in _INT64:
        dec, enc = dec_int, str
    elif cpp in _INT32:
        dec, enc = dec_int, None
    elif cpp == FieldDescriptor.CPPTYPE_BOOL:
        dec, enc = dec_bool, None
    elif cpp == FieldDescriptor.CPPTYPE_DOUBLE:
        dec, enc = dec_double, enc_double
    elif cpp == FieldDescriptor.CPPTYPE_FLOAT:
        dec, enc = dec_float, enc_float
    elif f.type == FieldDescriptor.TYPE_BYTES:
        dec, enc = dec_bytes, enc_bytes
    elif f.type == FieldDescriptor.TYPE_STRING:
        dec, enc = dec_string, None
    else:
        return None
    if f.is_repeated:
        return repeated(dec), repeated_out(enc)
    return dec, enc


def _custom_enum_names(enum: EnumDescriptor) -> bool:
    try:
        ext = descriptor_pool.Default().FindExtensionByName("pb.enumvalue.json")
    except KeyError:
        return False
    return any(v.GetOptions().HasExtension(ext) for v in enum.values)  # type: ignore[arg-type]


# Decoding. Each converter returns the value to give the message, or raises
# (Fallback or anything else) to leave the whole message to json_format.


def _decode(js: dict[str, Any], plan: _Plan, depth: int) -> Message:
    if depth > _MAX_DEPTH:
        raise Fallback
    keys = plan.keys
    kwargs: dict[str, Any] = {}
    seen: set[str] | None = None
    for key, value in js.items():
        field = keys.get(key)
        if field is None:
            if key[:1] == "[":  # json_format refuses extension names here
                raise Fallback
            continue  # unknown fields are ignored
        name, conv, oneof, aliased = field
        if aliased or oneof is not None:
            if seen is None:
                seen = set()
            if aliased:
                if name in seen:
                    raise Fallback  # named twice: json_format merges or clears
                seen.add(name)
            if oneof is not None and value is not None:
                if oneof in seen:
                    raise Fallback  # json_format refuses two members of a oneof
                seen.add(oneof)
        if value is None:
            continue  # null clears the field: it stays unset
        kwargs[name] = value if conv is None else conv(value, depth)
    return plan.cls(**kwargs)


def _message_converters(
    cls: type[Message],
) -> tuple[Callable[[Any, int], Any], Callable[[Any], Any]]:
    def dec(value: Any, depth: int) -> Message:
        if type(value) is not dict:
            raise Fallback
        plan = _plan(cls)
        if not plan.fast:
            raise Fallback
        return _decode(value, plan, depth + 1)

    def enc(value: Message) -> dict[str, Any]:
        plan = _plan(cls)
        if not plan.fast:
            raise Fallback
        return _encode(value, plan)

    return dec, enc


def _enum_converters(
    enum: EnumDescriptor,
) -> tuple[Callable[[Any, int], Any], Callable[[Any], Any]]:
    by_name = {v.name: v.number for v in enum.values}
    by_number: dict[int, str] = {}
    for v in reversed(enum.values):  # with aliases, the first name of a number wins
        by_number[v.number] = v.name
    closed = enum.is_closed

    def dec(value: Any, depth: int) -> int:
        if type(value) is str:
            return by_name[value]  # KeyError: unknown names are json_format's
        if type(value) is int and (not closed or value in by_number):
            return value
        raise Fallback

    def enc(value: int) -> str | int:
        name = by_number.get(value)
        if name is not None:
            return name
        if closed:
            raise Fallback
        return value

    return dec, enc


# Encoding: the dict json_format's printer builds, field by field in the
# order ListFields() gives (field number).


def _encode(msg: Message, plan: _Plan) -> dict[str, Any]:
    out = plan.out
    js: dict[str, Any] = {}
    for field, value in msg.ListFields():
        name, conv = out[field]
        js[name] = value if conv is None else conv(value)
    return js
