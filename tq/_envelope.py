"""The JSON envelope a task travels in: {"class", "type", "body"}.

`body` is the payload in protobuf's JSON mapping (what
`json_format.MessageToJson` writes and `ParseDict` reads, through the faster
`tq._pbjson`), whatever its JSON kind: an object for most messages, but a
string for a `StringValue`, `Timestamp` or `FieldMask`, a number or a
boolean for the other wrappers, a list for a `ListValue`, anything for a
`Value`. Decoding ignores unknown fields, so a producer running a newer
payload version does not break an older consumer.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from tq import _pbjson


class EnvelopeError(ValueError):
    """The push body is not a valid envelope (maps to HTTP 400)."""


def encode(class_id: str, payload: Message) -> bytes:
    """The envelope of `payload` for task class `class_id`, as UTF-8 JSON."""
    body = _pbjson.to_json(payload)
    return _head(class_id, payload.DESCRIPTOR.full_name) + body.encode() + b"}"


@functools.lru_cache(maxsize=1024)
def _head(class_id: str, type_name: str) -> bytes:
    # The same few (class, type) pairs over and over: quote them once.
    return b'{"class":%s,"type":%s,"body":' % (
        json.dumps(class_id).encode(),
        json.dumps(type_name).encode(),
    )


def peek(raw: bytes) -> tuple[str, str, Any]:
    """Parses an envelope into (class ID, type name, JSON body)."""
    try:
        # Strict UTF-8 (json.loads on bytes would also take UTF-16/32, a BOM and
        # encoded lone surrogates); standard JSON only (no NaN or Infinity).
        # ValueError covers decoding errors and numbers over Python's
        # int-digits limit.
        doc = _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise EnvelopeError(f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise EnvelopeError("envelope must be a JSON object")
    class_id, type_name, body = doc.get("class"), doc.get("type"), doc.get("body")
    if not isinstance(class_id, str) or not class_id:
        raise EnvelopeError('envelope has no "class" string')
    if not isinstance(type_name, str) or not type_name:
        raise EnvelopeError('envelope has no "type" string')
    if "body" not in doc:
        raise EnvelopeError('envelope has no "body"')
    # Any JSON kind: whether it suits the payload type is decode_body's call.
    return class_id, type_name, body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every push (json.loads with options makes one per call).
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


# The well-known types whose proto JSON is not an object. Every other message
# is an object in JSON; json_format would take a string or a list for one
# (iterating over it as over keys), so such bodies are refused here.
_NOT_OBJECTS = frozenset(
    {
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.ListValue",
        "google.protobuf.Timestamp",
        "google.protobuf.Value",
    }
)


def _json_is_object(prototype: type[Message]) -> bool:
    desc = prototype.DESCRIPTOR
    return not (
        desc.full_name in _NOT_OBJECTS or desc.file.name == "google/protobuf/wrappers.proto"
    )


def decode_body(body: Any, prototype: type[Message]) -> Message:
    """Builds a `prototype` message from the envelope body (unknown fields ignored)."""
    if type(body) is not dict and _json_is_object(prototype):
        name = prototype.DESCRIPTOR.full_name
        raise EnvelopeError(f"body is not a valid {name}: its JSON must be an object")
    try:
        return _pbjson.from_dict(body, prototype)
    except (json_format.ParseError, ValueError, TypeError, OverflowError, RecursionError) as e:
        # OverflowError: an integer too large for a float field.
        name = prototype.DESCRIPTOR.full_name
        raise EnvelopeError(f"body is not a valid {name}: {e}") from None
