"""The JSON envelope tasks travel in."""

from __future__ import annotations

import json

import pytest

from tests.testpb import payloads_pb2 as pb
from tq import _envelope
from tq._envelope import EnvelopeError


@pytest.mark.parametrize(
    "payload",
    [pb.Greet(name="ada"), pb.Greet(), pb.Count(n=2**62, tag="t"), pb.Blob(data=b"\x00\xff")],
)
def test_round_trip(payload: object) -> None:
    raw = _envelope.encode("cls-1", payload)  # type: ignore[arg-type]
    class_id, type_name, body = _envelope.peek(raw)
    assert class_id == "cls-1"
    assert type_name == payload.DESCRIPTOR.full_name  # type: ignore[attr-defined]
    assert _envelope.decode_body(body, type(payload)) == payload  # type: ignore[arg-type]


def test_envelope_is_compact_json_with_the_three_keys() -> None:
    raw = _envelope.encode('we"ird', pb.Count(n=5))
    doc = json.loads(raw)
    assert doc == {"class": 'we"ird', "type": "tq.tests.Count", "body": {"n": "5"}}
    assert b"\n" not in raw


def test_unknown_fields_in_the_body_are_ignored() -> None:
    raw = json.dumps(
        {"class": "c", "type": "tq.tests.Greet", "body": {"name": "x", "addedLater": 3}}
    ).encode()
    _, _, body = _envelope.peek(raw)
    assert _envelope.decode_body(body, pb.Greet) == pb.Greet(name="x")


def test_unknown_top_level_keys_are_ignored() -> None:
    raw = b'{"class": "c", "type": "t", "body": {}, "v": 2}'
    assert _envelope.peek(raw) == ("c", "t", {})


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"type": "t", "body": {}}', '"class"'),
        (b'{"class": "", "type": "t", "body": {}}', '"class"'),
        (b'{"class": "c", "body": {}}', '"type"'),
        (b'{"class": "c", "type": "t"}', '"body"'),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_malformed_envelopes_are_refused(raw: bytes, why: str) -> None:
    with pytest.raises(EnvelopeError, match=why):
        _envelope.peek(raw)


@pytest.mark.parametrize("body", [{"name": 5}, {"n": "many"}])
def test_body_not_matching_the_type_is_refused(body: dict[str, object]) -> None:
    proto = pb.Greet if "name" in body else pb.Count
    with pytest.raises(EnvelopeError, match="not a valid"):
        _envelope.decode_body(body, proto)


def test_an_integer_too_large_for_a_float_field_is_a_bad_body() -> None:
    from tests.testpb import kinds_pb2

    with pytest.raises(EnvelopeError, match="not a valid"):
        _envelope.decode_body({"db": 10**400}, kinds_pb2.AllKinds)
