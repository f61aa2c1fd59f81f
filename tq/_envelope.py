"""The JSON envelope a task travels in: {"class", "type", "body"}.

`body` is the payload in protobuf's JSON mapping. Decoding ignores unknown
fields, so a producer running a newer payload version does not break an older
consumer.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message


class EnvelopeError(ValueError):
    """The push body is not a valid envelope (maps to HTTP 400)."""


def encode(class_id: str, payload: Message) -> bytes:
    """The envelope of `payload` for task class `class_id`, as UTF-8 JSON."""
    body = json_format.MessageToJson(payload, indent=None, preserving_proto_field_name=False)
    type_name = payload.DESCRIPTOR.full_name
    return b'{"class":%s,"type":%s,"body":%s}' % (
        json.dumps(class_id).encode(),
        json.dumps(type_name).encode(),
        body.encode(),
    )


def peek(raw: bytes) -> tuple[str, str, Any]:
    """Parses an envelope into (class ID, type name, JSON body)."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise EnvelopeError(f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise EnvelopeError("envelope must be a JSON object")
    class_id, type_name, body = doc.get("class"), doc.get("type"), doc.get("body")
    if not isinstance(class_id, str) or not class_id:
        raise EnvelopeError('envelope has no "class" string')
    if not isinstance(type_name, str) or not type_name:
        raise EnvelopeError('envelope has no "type" string')
    if not isinstance(body, dict):
        raise EnvelopeError('envelope "body" must be a JSON object')
    return class_id, type_name, body


def decode_body(body: Any, prototype: type[Message]) -> Message:
    """Builds a `prototype` message from the envelope body (unknown fields ignored)."""
    msg = prototype()
    try:
        json_format.ParseDict(body, msg, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as e:
        raise EnvelopeError(f"body is not a valid {msg.DESCRIPTOR.full_name}: {e}") from None
    return msg
