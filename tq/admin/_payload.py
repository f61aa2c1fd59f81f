"""A task's body made readable: the payload as its protobuf type reads it, as indented JSON."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tq._dispatcher import Dispatcher


def readable_payload(body: bytes, dispatcher: Dispatcher | None = None) -> dict[str, Any]:
    """What a task body holds, for a person: `class`, `type`, `json` and `note`.

    The body is tq's envelope; its payload is decoded with the prototype of
    the dispatcher's class (or the type's generated class, if imported) and
    printed as the type's JSON, so a body that would not decode says why in
    `note`. A body that is not an envelope is shown as JSON or text.
    """
    from google.protobuf import descriptor_pool, json_format, message_factory

    from tq import _envelope

    out: dict[str, Any] = {"class": None, "type": None, "json": "", "note": ""}
    try:
        class_id, type_name, payload = _envelope.peek(body)
    except _envelope.EnvelopeError as e:
        out["note"] = f"not a tq envelope ({e})"
        out["json"] = _text(body)
        return out
    out.update({"class": class_id, "type": type_name})
    prototype: Any = None
    cls = dispatcher.task_class_by_id(class_id) if dispatcher is not None else None
    if cls is not None and cls.prototype.DESCRIPTOR.full_name == type_name:
        prototype = cls.prototype
    else:
        try:
            desc = descriptor_pool.Default().FindMessageTypeByName(type_name)
            prototype = message_factory.GetMessageClass(desc)
        except KeyError:
            pass
    if prototype is None:
        out["note"] = f"type {type_name} is not known here: shown as sent"
        out["json"] = json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True)
        return out
    try:
        msg = _envelope.decode_body(payload, prototype)
    except _envelope.EnvelopeError as e:
        out["note"] = str(e)
        out["json"] = json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True)
        return out
    out["json"] = json_format.MessageToJson(msg, indent=2, ensure_ascii=False)
    return out


def _text(body: bytes) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body.hex()
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text
