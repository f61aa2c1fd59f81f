"""Fuzzing the push endpoint (tq.asgi) with Hypothesis.

Each example is one request built from the parts Cloud Tasks sends, each
part either right or broken: the path (class ID, title), the Authorization
and Host headers (valid token, none, garbage, altered, repeated), the
Content-Type and Content-Length headers (missing, wrong, lying, repeated),
any other headers (X-CloudTasks-*, X-AppEngine-* off App Engine, arbitrary
bytes), and the body (a valid envelope, an envelope with parts dropped or
replaced, unknown fields, wrong class or type, invalid UTF-8, other
encodings, non-standard JSON, huge numbers, deep nesting, random bytes,
sizes around the body limit), cut into random chunks.

A reference model of the contract (docs/push-endpoint.md) says whether the
request is valid and, if not, which statuses its faults allow. The property:
no exception escapes the app; one response; a valid request runs its
handler once with the payload and answers the handler's status; an invalid
one runs no handler, answers a status its faults allow (400, 403 or 404),
and is counted in `tq_pushes_rejected`; the app never pulls more than the
body limit plus one chunk.

Examples: 300 in CI (derandomized), 100,000 with TQ_LONG=1.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import functools
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Mount

import tq
import tq.asgi
from tests._longmode import fuzz_settings, record_figure
from tests.hardening._asgi_call import call
from tests.testpb import payloads_pb2 as pb
from tq import _metrics
from tqtesting.oidc import LocalIssuer

HOST = "app.test"
AUDIENCE = f"https://{HOST}"
PUSHER = "tq-push@p.iam.gserviceaccount.com"
MOUNT = "/internal/tasks"
PREFIX = "/internal/tasks/t/"
SWEEP = "/internal/tasks/c/sweep"
LIMIT = (
    8192  # the fuzzed app's max_body_bytes: small (sizes around it are cheap), over 4,300 digits
)
MAX_CHUNK = 3000

PROTOTYPES: dict[str, type[Message]] = {
    "greet": pb.Greet,
    "count": pb.Count,
    "fail": pb.Fail,
    "blob": pb.Blob,  # registered without a handler
}
WITH_HANDLER = frozenset({"greet", "count", "fail"})
FAIL_STATUS = {"fatal": 202, "ignore": 204, "retry": 429, "transient": 500}
DOCUMENTED_STATUSES = frozenset({200, 202, 204, 400, 403, 404, 429, 500})
KNOWN_FIELDS = frozenset({"name", "n", "tag", "how", "data"})


# The world the examples run in: one app, one issuer, one event loop.


@dataclasses.dataclass
class World:
    app: Starlette
    runner: asyncio.Runner
    token: str
    calls: list[tuple[str, Message]]
    sweeps: list[int]


class _Sweeper:
    def __init__(self, sweeps: list[int]) -> None:
        self.sweeps = sweeps

    def sweep(self, dispatcher: tq.Dispatcher) -> None:
        self.sweeps.append(1)

    async def sweep_async(self, dispatcher: tq.Dispatcher) -> None:
        self.sweeps.append(1)


def _dispatcher(calls: list[tuple[str, Message]], sweeps: list[int]) -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project="p",
        cloud_region="us-central1",
        default_target_host=HOST,
        push_as=PUSHER,
        sweeper=_Sweeper(sweeps),
    )

    @d.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    async def greet(p: pb.Greet) -> None:
        calls.append(("greet", p))

    @d.task_class(id="count", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    def count(p: pb.Count) -> None:  # a sync handler: runs in a thread
        calls.append(("count", p))

    @d.task_class(id="fail", prototype=pb.Fail, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    async def fail(p: pb.Fail) -> None:
        calls.append(("fail", p))
        raise {
            "fatal": tq.Fatal("f"),
            "ignore": tq.Ignore("i"),
            "retry": tq.Retry("r"),
            "transient": tq.Transient("t"),
        }.get(p.how, ValueError("boom"))

    d.register_task_class(
        tq.TaskClass(id="blob", prototype=pb.Blob, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    )
    return d


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    calls: list[tuple[str, Message]] = []
    sweeps: list[int] = []
    tq_log = logging.getLogger("tq")
    level = tq_log.level
    # Every refusal logs a warning: at 100,000 examples the captured records
    # would fill memory. Statuses and counters are checked instead.
    tq_log.setLevel(logging.CRITICAL + 1)
    with LocalIssuer() as issuer, asyncio.Runner() as runner:
        d = _dispatcher(calls, sweeps)
        inner = tq.asgi.app(d, certs_url=issuer.certs_url, max_body_bytes=LIMIT)
        app = Starlette(routes=[Mount(MOUNT, app=inner)])
        token = issuer.mint(email=PUSHER, audience=AUDIENCE, lifetime_s=7 * 24 * 3600)
        yield World(app, runner, token, calls, sweeps)
    tq_log.setLevel(level)


# Strategies. Each request is built from parts; `broken` names the parts
# drawn wrong (none in about a third of the requests, so valid pushes are
# frequent and single faults common). The reference model below, not the
# generator, decides what the request is.

PARTS = (
    "auth", "host", "content-type", "content-length", "headers", "path",
    "class", "type", "body", "envelope", "encoding", "bytes", "size",
)  # fmt: skip

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=8,
)
surrogates = st.integers(0xD800, 0xDFFF).map(chr)
# Text with lone surrogates now and then (not encodable as UTF-8).
odd_text = st.text(max_size=30) | st.lists(
    st.text(max_size=5) | surrogates, min_size=1, max_size=4
).map("".join)

_messages: dict[str, st.SearchStrategy[Message]] = {
    "greet": st.builds(pb.Greet, name=st.text(max_size=40)),
    "count": st.builds(pb.Count, n=st.integers(-(2**63), 2**63 - 1), tag=st.text(max_size=10)),
    "fail": st.builds(
        pb.Fail, how=st.sampled_from(["", "fatal", "ignore", "retry", "transient", "boom"])
    ),
    "blob": st.builds(pb.Blob, data=st.binary(max_size=200)),
}
unknown_fields = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in KNOWN_FIELDS), json_values, max_size=3
)
ANY_VALUE = json_values | odd_text
CLASS_IDS = st.sampled_from([*PROTOTYPES, "nope", ""]) | odd_text
TYPE_NAMES = (
    st.sampled_from(["tq.tests.Greet", "tq.tests.Count", "google.protobuf.Empty"]) | odd_text
)
BOOLS = st.booleans()
SIZES = st.sampled_from(range(LIMIT - 8, LIMIT + 9)) | st.integers(LIMIT, 3 * LIMIT)


# Strategies are made once (a strategy built inside a draw is validated
# again on every example, which would double the cost of generation).
@functools.cache
def choice(*values: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


@functools.cache
def ints(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high)


@functools.cache
def texts(max_size: int) -> st.SearchStrategy[str]:
    return st.text(max_size=max_size)


@functools.cache
def binaries(min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=min_size, max_size=max_size)


@st.composite
def payload_bodies(draw: st.DrawFn, class_id: str, broken: frozenset[str]) -> Any:
    """The envelope's "body": a payload's proto JSON, maybe with unknown fields."""
    kind = class_id if class_id in PROTOTYPES else draw(choice(*PROTOTYPES))
    body: Any = json_format.MessageToDict(draw(_messages[kind]))
    if draw(BOOLS):
        body = {**body, **draw(unknown_fields)}  # ignored: still valid
    if "body" in broken:
        if draw(BOOLS):
            field = draw(choice(*sorted(KNOWN_FIELDS)))
            body = {**body, field: draw(ANY_VALUE)}
        else:
            body = draw(json_values)
    return body


@st.composite
def envelopes(draw: st.DrawFn, class_id: str, broken: frozenset[str]) -> Any:
    """The envelope document of a push of `class_id`."""
    if "class" in broken:
        class_id = draw(CLASS_IDS)
    proto = PROTOTYPES.get(class_id)
    type_name = proto.DESCRIPTOR.full_name if proto else "tq.tests.Greet"
    if "type" in broken:
        type_name = draw(TYPE_NAMES)
    doc: dict[str, Any] = {
        "class": class_id,
        "type": type_name,
        "body": draw(payload_bodies(class_id, broken)),
    }
    if draw(ints(0, 3)) == 0:
        doc.update(draw(unknown_fields))  # unknown top-level fields: ignored
    if "envelope" in broken:
        for key in ("class", "type", "body"):
            fate = draw(choice("keep", "keep", "drop", "replace"))
            if fate == "drop":
                del doc[key]
            elif fate == "replace":
                doc[key] = draw(ANY_VALUE)
        if draw(ints(0, 4)) == 0:
            return draw(json_values)
    return doc


RAW_LITERALS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1" * 5000,
    "-" + "9" * 4400,
    "1e999",
    "[" * 3000 + "]" * 3000,
    '"\\ud800"',
    '"\\udfff\\ud800"',
]


@st.composite
def bodies(draw: st.DrawFn, class_id: str, broken: frozenset[str]) -> bytes:
    if "bytes" in broken and draw(BOOLS):
        return draw(binaries(0, 300))
    doc = draw(envelopes(class_id, broken))
    text = json.dumps(doc, ensure_ascii=draw(BOOLS))
    encoding = "utf-8"
    if "encoding" in broken:
        how = draw(choice("literal", "utf-8-sig", "utf-16", "utf-32", "surrogate"))
        if how == "literal" and isinstance(doc, dict):
            literal = draw(choice(*RAW_LITERALS))
            key = draw(choice("zz", "class", "type", "body"))
            text = text[:-1] + (", " if doc else "") + f'"{key}": {literal}' + "}"
        elif how == "surrogate" and isinstance(doc, dict):
            # A lone surrogate written raw into the UTF-8 (invalid UTF-8).
            doc["zz"] = draw(surrogates)
            text = json.dumps(doc, ensure_ascii=False)
        elif how in ("utf-8-sig", "utf-16", "utf-32"):
            encoding = how
    raw = text.encode(encoding, "surrogatepass")
    if "bytes" in broken and raw:
        how = draw(choice("insert", "overwrite", "truncate"))
        if how == "insert":
            at = draw(ints(0, len(raw)))
            raw = raw[:at] + draw(binaries(1, 4)) + raw[at:]
        elif how == "overwrite":
            at = draw(ints(0, len(raw) - 1))
            raw = raw[:at] + draw(binaries(1, 2)) + raw[at + 2 :]
        else:
            raw = raw[: draw(ints(0, len(raw) - 1))]
    if "size" in broken and raw.endswith(b"}"):
        # JSON whitespace up to a size around the body limit (either side of it).
        target = draw(SIZES)
        raw = raw[:-1] + b" " * max(0, target - len(raw)) + b"}"
    return raw


@st.composite
def paths(draw: st.DrawFn, class_id: str, broken: frozenset[str]) -> str:
    title = "/" + draw(texts(20)).replace("\n", "") if draw(BOOLS) else ""
    if "path" not in broken:
        return PREFIX + class_id + title
    kind = draw(choice("other class", "odd class", "under mount", "sweep", "newline"))
    if kind == "other class":
        return PREFIX + draw(choice(*PROTOTYPES)) + title
    if kind == "odd class":
        return PREFIX + draw(texts(12))
    if kind == "under mount":
        return MOUNT + "/" + draw(texts(20))
    if kind == "newline":
        return PREFIX + class_id + "\n" + title
    return SWEEP


Header = tuple[bytes, bytes]
TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@st.composite
def auth_headers(draw: st.DrawFn, token: str, broken: frozenset[str]) -> list[Header]:
    name = b"authorization"
    valid = (f"Bearer {token}", f"bearer {token}", f"  Bearer {token} ")
    if "auth" not in broken:
        return [(name, draw(choice(*valid)).encode())]
    kind = draw(choice("none", "garbage", "altered", "twice", "basic"))
    if kind == "none":
        return []
    if kind == "garbage":
        return [(name, draw(choice(b"Bearer ", b"Bearer") | binaries(0, 60)))]
    if kind == "basic":
        return [(name, b"Basic " + base64.b64encode(token.encode()[:30]))]
    if kind == "altered":
        # A character of the signed part changed: the signature cannot verify.
        head, claims, sig = token.split(".")
        signed = f"{head}.{claims}"
        at = draw(ints(0, len(signed) - 1).filter(lambda i: signed[i] != "."))
        new = draw(choice(*TOKEN_CHARS).filter(lambda c: c != signed[at]))
        return [(name, f"Bearer {signed[:at]}{new}{signed[at + 1 :]}.{sig}".encode())]
    # Two Authorization headers are ambiguous, even two valid ones.
    other = draw(choice(valid[0].encode(), b"Bearer x.y.z", b""))
    return draw(st.permutations([(name, valid[0].encode()), (name, other)]))


EXTRA_NAMES = st.sampled_from(
    [b"x-cloudtasks-taskname", b"x-cloudtasks-queuename", b"x-cloudtasks-taskretrycount",
     b"x-cloudtasks-taskexecutioncount", b"x-cloudtasks-tasketa",
     b"x-cloudtasks-taskpreviousresponse", b"x-cloudtasks-taskretryreason",
     b"x-appengine-queuename", b"x-appengine-taskname", b"x-appengine-cron",
     b"x-tq-expected-eta", b"traceparent", b"transfer-encoding", b"expect"]
) | st.binary(min_size=1, max_size=12)  # fmt: skip


HOSTS = st.sampled_from(
    [(), ((b"host", b"evil.test"),), ((b"host", b"APP.TEST"),), ((b"host", b"app.test:1"),),
     ((b"host", HOST.encode()),) * 2]
)  # fmt: skip
CONTENT_TYPES = st.sampled_from(
    [(), (b"text/plain",), (b"application/json; charset=latin-1",), (b"x/\xff\xfe",),
     (b"application/json", b"text/html")]
)  # fmt: skip
LENGTHS = (
    st.sampled_from([None, (), (b"\xb2",), (b"1\xb3",), (b"-1",)])
    | st.tuples(st.binary(max_size=8))
    | st.integers(0, 10).map(lambda n: (str(n).encode(),))
    | st.integers(LIMIT + 1, 10**30).map(lambda n: (str(n).encode(),))
)
EXTRA_HEADERS = st.lists(st.tuples(EXTRA_NAMES, st.binary(max_size=40)), max_size=5)


@st.composite
def other_headers(draw: st.DrawFn, body: bytes, broken: frozenset[str]) -> list[Header]:
    """Host, Content-Type, Content-Length and more, right or broken as `broken` says."""
    headers: list[Header] = [(b"host", HOST.encode())]
    if "host" in broken:
        headers = list(draw(HOSTS))
    ctype = [b"application/json"]
    if "content-type" in broken:
        ctype = list(draw(CONTENT_TYPES))
    headers += [(b"content-type", v) for v in ctype]
    lengths = [str(len(body)).encode()]
    if "content-length" in broken:
        drawn = draw(LENGTHS)
        lengths = [b"10", lengths[0]] if drawn is None else list(drawn)  # None: twice
    headers += [(b"content-length", v) for v in lengths]
    if "headers" in broken:
        headers += draw(EXTRA_HEADERS)
    return headers


@st.composite
def chunkings(draw: st.DrawFn, body: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(ints(0, len(body)), max_size=6)))
    chunks, start = [], 0
    for cut in [*cuts, len(body)]:
        while cut - start > MAX_CHUNK:
            chunks.append(body[start : start + MAX_CHUNK])
            start += MAX_CHUNK
        if cut > start:
            chunks.append(body[start:cut])
            start = cut
    return chunks


@dataclasses.dataclass
class Request:
    path: str
    headers: list[Header]
    chunks: list[bytes]
    body: bytes
    authentic: bool  # one valid token, for the right audience


_PART_SETS = st.sets(st.sampled_from(PARTS), min_size=1, max_size=4).map(frozenset)
BROKEN = st.one_of(st.just(frozenset[str]()), _PART_SETS, _PART_SETS)


@st.composite
def push_requests(draw: st.DrawFn, token: str) -> Request:
    broken = draw(BROKEN)
    class_id = draw(choice(*sorted(WITH_HANDLER)))
    body = draw(bodies(class_id, broken))
    path = draw(paths(class_id, broken))
    auth = draw(auth_headers(token, broken))
    others = draw(other_headers(body, broken))
    headers = draw(st.permutations(auth + others))
    authentic = "auth" not in broken and (
        "host" not in broken or [v for k, v in others if k == b"host"] == [HOST.encode()]
    )
    return Request(path, headers, draw(chunkings(body)), body, authentic)


# The reference model of the contract.


@dataclasses.dataclass
class Verdict:
    allowed: frozenset[int]  # empty: the request is valid
    class_id: str = ""
    payload: Message | None = None
    metric: str = "tq_pushes_rejected"
    counted: bool = True

    @property
    def valid(self) -> bool:
        return not self.allowed


class _NotJSON(ValueError):
    pass


def _no_constants(name: str) -> Any:
    raise _NotJSON(f"{name} is not JSON")


def envelope_faults(path_class: str, body: bytes) -> tuple[set[int], Message | None]:
    """The statuses the body's faults allow, or the payload of a valid envelope."""
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return {400}, None  # not strict UTF-8 JSON
    if not isinstance(doc, dict):
        return {400}, None
    cid, type_name, payload = doc.get("class"), doc.get("type"), doc.get("body")
    if not (isinstance(cid, str) and cid and isinstance(type_name, str) and type_name):
        return {400}, None
    if "body" not in doc:
        return {400}, None
    faults: set[int] = set()
    if cid != path_class:
        faults.add(400)
    if cid not in WITH_HANDLER:
        faults.add(404)
        return faults, None
    proto = PROTOTYPES[cid]
    if type_name != proto.DESCRIPTOR.full_name:
        faults.add(400)
        return faults, None
    if not isinstance(payload, dict):
        # The body is the payload's proto JSON, whatever its kind; these
        # classes' types are plain messages, whose JSON is an object.
        faults.add(400)
        return faults, None
    msg = proto()
    try:
        json_format.ParseDict(payload, msg, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError):
        faults.add(400)
        return faults, None
    return faults, msg


def verdict(req: Request) -> Verdict:
    def values(name: bytes) -> list[bytes]:
        return [v for k, v in req.headers if k.lower() == name]

    if "\n" in req.path[:-1]:
        # Starlette's routes are regexes ending in "$" with "." for a path
        # segment: a newline inside the path matches none, so the app's own
        # router answers (404, or 307 to the path without its trailing
        # slash), not tq; a trailing newline is let through to tq.
        return Verdict(frozenset({404, 307}), counted=False)
    if req.path == SWEEP:
        return Verdict(frozenset({403}), metric="tq_sweeps_rejected")
    faults: set[int] = set()
    lengths = values(b"content-length")
    if len(lengths) == 1 and lengths[0].isdigit() and int(lengths[0]) > LIMIT:
        faults.add(400)
    if not req.authentic:
        faults.add(403)
    path_class = req.path[len(PREFIX) :].split("/", 1)[0] if req.path.startswith(PREFIX) else ""
    if not path_class:
        return Verdict(frozenset(faults | {404}))
    if len(req.body) > LIMIT:
        return Verdict(frozenset(faults | {400}))
    body_faults, payload = envelope_faults(path_class, req.body)
    faults |= body_faults
    return Verdict(frozenset(faults), path_class, payload)


def expected_status(v: Verdict) -> int:
    if v.class_id == "fail":
        assert isinstance(v.payload, pb.Fail)
        return FAIL_STATUS.get(v.payload.how, 500)
    return 200


# The property.


def test_push_endpoint_answers_only_documented_statuses_and_runs_only_valid_tasks(
    world: World,
) -> None:
    stats: collections.Counter[str] = collections.Counter()

    @given(data=st.data())
    @fuzz_settings()
    def one_request(data: st.DataObject) -> None:
        req = data.draw(push_requests(world.token))
        v = verdict(req)
        world.calls.clear()
        world.sweeps.clear()
        _metrics.reset()

        ex = world.runner.run(
            call(world.app, path=req.path, headers=req.headers, chunks=req.chunks, host=HOST)
        )

        stats["cases"] += 1
        stats[f"status_{ex.status}"] += 1
        assert ex.starts == 1
        assert ex.status in DOCUMENTED_STATUSES | v.allowed
        assert ex.pulled_bytes <= LIMIT + MAX_CHUNK
        assert world.sweeps == []
        if v.valid:
            stats["valid"] += 1
            assert ex.status == expected_status(v)
            assert world.calls == [(v.class_id, v.payload)]
            assert _metrics.value("tq_pushes_handled") == 1
            assert _metrics.value("tq_pushes_rejected") == 0
        else:
            assert ex.status in v.allowed, f"{ex.status} {ex.body!r}, allowed {sorted(v.allowed)}"
            assert world.calls == []
            if v.counted:
                assert _metrics.value(v.metric) == 1
            assert _metrics.value("tq_pushes_handled") == 0

    one_request()
    assert stats["valid"] > 0  # the generator reaches the handlers, too
    record_figure(
        "push_fuzz",
        cases=stats["cases"],
        valid=stats["valid"],
        statuses={k[7:]: n for k, n in sorted(stats.items()) if k.startswith("status_")},
    )


# What the fuzzer found, kept as plain examples.

_GREET = b'{"class":"greet","type":"tq.tests.Greet","body":{"name":"x"%s}}'
FOUND = {
    "utf16_envelope": ('{"class":"greet","type":"tq.tests.Greet","body":{}}'.encode("utf-16"), {}),
    "utf8_bom": (b"\xef\xbb\xbf" + _GREET % b"", {}),
    "encoded_surrogate_in_unknown_field": (_GREET % b',"zz":"\xed\xa0\x80"', {}),
    "nan_in_unknown_field": (_GREET % b',"zz":NaN', {}),
    "number_over_int_digits_limit": (_GREET % (b',"zz":' + b"1" * 5000), {}),
    "superscript_content_length": (_GREET % b"", {b"content-length": b"\xb2"}),
}


@pytest.mark.parametrize("case", list(FOUND))
def test_inputs_the_fuzzer_found_are_refused_cleanly(world: World, case: str) -> None:
    body, extra = FOUND[case]
    headers = [(b"host", HOST.encode()), (b"authorization", f"Bearer {world.token}".encode())]
    headers += list(extra.items())
    world.calls.clear()
    _metrics.reset()

    ex = world.runner.run(call(world.app, path=PREFIX + "greet", headers=headers, chunks=[body]))

    if case == "superscript_content_length":  # not a number: ignored, the body decides
        assert (ex.status, world.calls) == (200, [("greet", pb.Greet(name="x"))])
    else:
        assert (ex.status, ex.body) == (400, b"bad_envelope\n")
        assert world.calls == []
        assert _metrics.value("tq_pushes_rejected", reason="bad_envelope") == 1
