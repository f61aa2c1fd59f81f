"""JSON values of protobuf scalar fields, both ways, as json_format reads and writes them.

The converters of `tq._pbjson`'s fast path: a decoder takes a JSON value
(and the nesting depth) and returns the field's value; an encoder takes a
field's value and returns its JSON value. Either raises (`Fallback`, or
anything else) to leave the whole message to json_format.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Callable
from typing import Any

# json_format's own limits and patterns.
_FLOAT32_MAX = float.fromhex("0x1.fffffep+127")
_UNPAIRED_SURROGATE = re.compile(
    "[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]"
)


class Fallback(Exception):
    """The fast path declines: json_format decides."""


# Decoding.


def dec_int(value: Any, depth: int) -> int:
    t = type(value)
    if t is int:
        return value  # type: ignore[no-any-return]
    if t is str and " " not in value:
        return int(value)
    raise Fallback


def dec_bool(value: Any, depth: int) -> bool:
    if type(value) is bool:
        return value
    raise Fallback


def dec_double(value: Any, depth: int) -> float:
    t = type(value)
    if t is float:
        if value - value != 0.0:  # inf or nan
            raise Fallback
        return value  # type: ignore[no-any-return]
    if t is int:
        return float(value)
    if t is str and value != "nan":
        return float(value)
    raise Fallback


def dec_float(value: Any, depth: int) -> float:
    if type(value) is float and not -_FLOAT32_MAX <= value <= _FLOAT32_MAX:
        raise Fallback
    return dec_double(value, depth)


def dec_bytes(value: Any, depth: int) -> bytes:
    if type(value) is not str:
        raise Fallback
    # json_format's padding and alphabet (both base64 flavours, lenient).
    encoded = value.encode("utf-8")
    return base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))


def dec_string(value: Any, depth: int) -> str:
    if type(value) is not str:
        raise Fallback
    if not value.isascii() and _UNPAIRED_SURROGATE.search(value):
        raise Fallback
    return value


def repeated(conv: Callable[[Any, int], Any] | None) -> Callable[[Any, int], Any]:
    def dec(value: Any, depth: int) -> list[Any]:
        if type(value) is not list or None in value:
            raise Fallback
        return value if conv is None else [conv(v, depth) for v in value]

    return dec


# Encoding.


def enc_double(value: float) -> float | str:
    if value - value == 0.0:
        return value
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def enc_float(value: float) -> float | str:
    if value - value != 0.0:
        return enc_double(value)
    # json_format's ToShortestFloat: the fewest digits that read back as the same float32.
    precision = 6
    rounded = float(f"{value:.{precision}g}")
    while float32(rounded) != value:
        precision += 1
        rounded = float(f"{value:.{precision}g}")
    return rounded


def float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]  # type: ignore[no-any-return]


def enc_bytes(value: bytes) -> str:
    return binascii.b2a_base64(value, newline=False).decode("ascii")


def repeated_out(conv: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    if conv is None:
        return list
    return lambda values: [conv(v) for v in values]
