"""The fast protobuf JSON codec (tq._pbjson) against google.protobuf.json_format.

The property, for encoding: `to_json(m)` is `MessageToJson(m, indent=None)`
byte for byte. For decoding: on any JSON value, `from_dict` and
`ParseDict(..., ignore_unknown_fields=True)` both raise, or both give the
same message.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from tests._longmode import fuzz_settings
from tests.testpb import kinds_pb2 as k
from tests.testpb import legacy_pb2 as lg
from tests.testpb import payloads_pb2 as pb
from tq import _pbjson

INT32 = st.integers(-(2**31), 2**31 - 1)
UINT32 = st.integers(0, 2**32 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
COLOR = st.one_of(st.sampled_from([0, 1, 2]), INT32)  # open enum: any int32
TEXT = st.text()

inner = st.deferred(
    lambda: st.builds(
        k.Inner,
        a=INT32,
        s=TEXT,
        ns=st.lists(INT64, max_size=3),
        child=st.none() | inner,
        color=COLOR,
    )
)

all_kinds = st.builds(
    k.AllKinds,
    i32=INT32,
    i64=INT64,
    u32=UINT32,
    u64=UINT64,
    s32=INT32,
    s64=INT64,
    f32=UINT32,
    f64=UINT64,
    sf32=INT32,
    sf64=INT64,
    fl=st.floats(width=32),
    db=st.floats(),
    flag=st.booleans(),
    text=TEXT,
    data=st.binary(),
    color=COLOR,
    inner=st.none() | inner,
    r_i32=st.lists(INT32, max_size=3),
    r_i64=st.lists(INT64, max_size=3),
    r_text=st.lists(TEXT, max_size=3),
    r_data=st.lists(st.binary(), max_size=3),
    r_color=st.lists(COLOR, max_size=3),
    r_inner=st.lists(inner, max_size=2),
    r_db=st.lists(st.floats(), max_size=3),
    r_flag=st.lists(st.booleans(), max_size=3),
    r_fl=st.lists(st.floats(width=32), max_size=3),
    r_u64=st.lists(UINT64, max_size=3),
    opt_i32=st.none() | INT32,
    opt_text=st.none() | TEXT,
    opt_color=st.none() | COLOR,
    snake_case_name=TEXT,
    custom=TEXT,
).flatmap(
    lambda m: st.sampled_from(
        [{}, {"c_text": "x"}, {"c_num": 2**40}, {"c_inner": k.Inner(a=1)}, {"c_inner": k.Inner()}]
    ).map(lambda oneof: _with(m, oneof))
)

legacy = st.deferred(
    lambda: st.builds(
        lg.Legacy,
        level=st.none() | st.sampled_from([1, 2]),
        levels=st.lists(st.sampled_from([1, 2]), max_size=3),
        x=st.none() | INT32,
        sub=st.none() | legacy,
        name=st.none() | TEXT,
        subs=st.lists(legacy, max_size=2),
    )
)


def _with(m: k.AllKinds, oneof: dict[str, Any]) -> k.AllKinds:
    for name, value in oneof.items():
        if isinstance(value, Message):
            getattr(m, name).CopyFrom(value)
        else:
            setattr(m, name, value)
    return m


def _same(a: Message, b: Message) -> bool:
    # Bytes, not ==: NaN != NaN.
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def _reference(js: Any, cls: type[Message]) -> Message | Exception:
    msg = cls()
    try:
        json_format.ParseDict(js, msg, ignore_unknown_fields=True)
    except Exception as e:
        return e
    return msg


def _check_decode(js: Any, cls: type[Message]) -> None:
    want = _reference(js, cls)
    snapshot = json.dumps(js, sort_keys=True, default=repr)
    try:
        got: Message | Exception = _pbjson.from_dict(js, cls)
    except Exception as e:
        got = e
    assert json.dumps(js, sort_keys=True, default=repr) == snapshot, "input changed"
    if isinstance(want, Exception):
        assert isinstance(got, Exception), f"json_format refused {js!r} ({want}), got {got}"
    else:
        assert not isinstance(got, Exception), f"json_format took {js!r}, fast path raised {got!r}"
        assert _same(got, want), f"{js!r}: {got} != {want}"


@fuzz_settings(ci=150)
@given(all_kinds)
def test_encoding_matches_json_format_byte_for_byte(m: k.AllKinds) -> None:
    text = _pbjson.to_json(m)
    assert text == json_format.MessageToJson(m, indent=None)
    _check_decode(json.loads(text), k.AllKinds)


@fuzz_settings(ci=100)
@given(legacy)
def test_proto2_messages_round_trip_like_json_format(m: lg.Legacy) -> None:
    text = _pbjson.to_json(m)
    assert text == json_format.MessageToJson(m, indent=None)
    _check_decode(json.loads(text), lg.Legacy)


# Arbitrary JSON, biased towards the field names and the values that matter.

_NAMES = sorted(
    {f.name for f in k.AllKinds.DESCRIPTOR.fields}
    | {f.json_name for f in k.AllKinds.DESCRIPTOR.fields}
    | {f.name for f in k.Inner.DESCRIPTOR.fields}
    | {f.json_name for f in lg.Legacy.DESCRIPTOR.fields}
)
_TRICKY_STRINGS = [
    "", "0", "-0", "12", " 12", "12 ", "\t7", "1_000", "+5", "0x10", "1e3", "1.0", "1.5",
    "١٢", "²", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
    "18446744073709551616", "NaN", "nan", "NAN", "Infinity", "-Infinity", "inf", "1e400",
    "RED", "GREEN", "COLOR_UNSPECIFIED", "red", "LOW", "HIGH", "3", "true", "false",
    "aGk=", "aGk", "a-_b", "a+/b", "!!", "====", "\ud800", "\udc00x", "\U0001f600", "é",
    "[x]", "[]", "[a.b]",
]  # fmt: skip
_TRICKY_NUMBERS = [
    0, 1, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32, 2**63, 2**64, -(2**63) - 1,
    10**400, 0.0, -0.0, 1.0, 1.5, 3.0, 1e20, 3.4028235e38, 3.5e38, -3.5e38, 1e300,
    math.inf, -math.inf, math.nan, True, False,
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.sampled_from(_TRICKY_STRINGS),
    st.sampled_from(_TRICKY_NUMBERS),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(_NAMES) | st.text(max_size=4), inner, max_size=4),
    ),
    max_leaves=12,
)
bodies = st.dictionaries(
    st.sampled_from(_NAMES) | st.sampled_from(["[x]", "[a.b]", "x", "_choice"]),
    json_values,
    max_size=6,
)


@fuzz_settings(ci=500)
@given(bodies, st.sampled_from([k.AllKinds, k.Inner, lg.Legacy, k.HoldsExtras, pb.Count]))
def test_decoding_any_json_matches_json_format(js: dict[str, Any], cls: type[Message]) -> None:
    _check_decode(js, cls)


def _chain(depth: int) -> dict[str, Any]:
    js: dict[str, Any] = {"a": 1}
    for _ in range(depth - 1):
        js = {"child": js}
    return js


@pytest.mark.parametrize("depth", [1, 99, 100, 101, 150])
def test_nesting_depth_limit_is_json_formats(depth: int) -> None:
    _check_decode(_chain(depth), k.Inner)
    assert isinstance(_reference(_chain(101), k.Inner), Exception)


@pytest.mark.parametrize(
    ("js", "cls"),
    [
        ({"snakeCaseName": "a", "snake_case_name": "b"}, k.AllKinds),
        ({"snake_case_name": "b", "snakeCaseName": None}, k.AllKinds),
        ({"rI64": ["1"], "r_i64": ["2", 3]}, k.AllKinds),
        ({"renamed": "a", "custom": "b"}, k.AllKinds),
        ({"custom": "b"}, k.AllKinds),
        ({"cText": "a", "cNum": "2"}, k.AllKinds),
        ({"cText": "a", "cNum": None}, k.AllKinds),
        ({"cText": None, "cNum": 5}, k.AllKinds),
        ({"cInner": {}}, k.AllKinds),
        ({"inner": {}, "rInner": [{}, {"a": 2}]}, k.AllKinds),
        ({"color": "BLUE"}, k.AllKinds),
        ({"rColor": ["RED", "BLUE", 2, 7]}, k.AllKinds),
        ({"color": 7}, k.AllKinds),
        ({"level": 3}, lg.Legacy),
        ({"level": "HIGH", "levels": ["LOW", "NOPE"]}, lg.Legacy),
        ({"x": None, "sub": {"x": 0}}, lg.Legacy),
        ({"i32": 2**31}, k.AllKinds),
        ({"i64": " 12", "u32": "12 "}, k.AllKinds),
        ({"rI32": ["\t7", "1_000"]}, k.AllKinds),
        ({"u64": -1}, k.AllKinds),
        ({"db": 10**400}, k.AllKinds),
        ({"db": math.inf, "fl": 1.5}, k.AllKinds),
        ({"fl": math.nan}, k.AllKinds),
        ({"rDb": [1.0, -math.inf]}, k.AllKinds),
        ({"fl": 1e39}, k.AllKinds),
        ({"fl": 10**39}, k.AllKinds),
        ({"fl": "1e39"}, k.AllKinds),
        ({"text": "\ud800"}, k.AllKinds),
        ({"data": "aGk"}, k.AllKinds),
        ({"inner": "abc"}, k.AllKinds),
        ({"inner": ["x"]}, k.AllKinds),
        ({"[x]": 1}, k.AllKinds),
        ({"a": 1, "[note]": "n"}, lg.Extendable),
        ({"a": 1, "[tq.tests.note]": "n"}, lg.Extendable),
        ({"name": "n", "counts": {"a": 1}, "when": "2026-01-01T00:00:00Z"}, k.WithExtras),
        ({"name": "n", "doc": {"a": [1, None]}, "maybe": 3, "nothing": None}, k.WithExtras),
        ({"n": 1, "extras": {"counts": {"a": "2"}, "inner": {"a": 1}}}, k.HoldsExtras),
        ({"n": 1, "extras": {"counts": {"a": "x"}}}, k.HoldsExtras),
    ],
)
def test_edge_cases_match_json_format(js: dict[str, Any], cls: type[Message]) -> None:
    _check_decode(js, cls)


@pytest.mark.parametrize(
    "m",
    [
        k.WithExtras(name="n", counts={"a": 1}, maybe={"value": 0}),
        k.HoldsExtras(n=3, extras=k.WithExtras(counts={"b": 2})),
        lg.Extendable(a=1),
        k.AllKinds(fl=math.nan, db=-math.inf, r_fl=[math.inf, 0.1], color=99),
    ],
)
def test_messages_left_to_json_format_encode_the_same(m: Message) -> None:
    assert _pbjson.to_json(m) == json_format.MessageToJson(m, indent=None)


def test_extensions_encode_like_json_format() -> None:
    m = lg.Extendable(a=1)
    m.Extensions[lg.note] = "hi"
    assert _pbjson.to_json(m) == json_format.MessageToJson(m, indent=None)


def test_plain_messages_take_the_fast_path() -> None:
    # Guards the point of the module: these must not silently fall back.
    assert _pbjson._plan(k.AllKinds).fast
    assert _pbjson._plan(lg.Legacy).fast
    assert _pbjson._plan(pb.Count).fast
    assert not _pbjson._plan(k.WithExtras).fast
    assert not _pbjson._plan(lg.Extendable).fast
    js = {"i64": "5", "rI64": ["1", 2], "inner": {"child": {"a": 1}}, "data": "aGk="}
    assert _pbjson._decode(js, _pbjson._plan(k.AllKinds), 1) == _reference(js, k.AllKinds)
