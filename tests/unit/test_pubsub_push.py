"""The Pub/Sub push endpoint: the wrapped format, OIDC tokens, ack or nack, ExecutionInfo."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator

import httpx
import pytest

import tq
import tq.pubsub
from tests.testpb import payloads_pb2 as pb
from tq import _envelope, _metrics
from tqtesting.oidc import LocalIssuer, SigningKey

PUSHER = "pubsub-push@proj.iam.gserviceaccount.com"
HOST = "app.example.com"
SUBSCRIPTION = "projects/proj/subscriptions/audit"


class Handlers:
    def __init__(self) -> None:
        self.seen: list[tuple[pb.Greet, tq.ExecutionInfo]] = []
        self.raise_: BaseException | None = None

    async def greet(self, payload: pb.Greet) -> None:
        self.seen.append((payload, tq.execution_info()))
        if self.raise_ is not None:
            raise self.raise_


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as i:
        yield i


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
def disp(handlers: Handlers) -> tq.Dispatcher:
    d = tq.Dispatcher(cloud_project="proj")
    d.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, topic="greets")(
        handlers.greet
    )
    return d


def body(
    class_id: str = "greet",
    payload: pb.Greet | None = None,
    *,
    attempt: int | None = None,
    data: bytes | None = None,
) -> bytes:
    if data is None:
        data = _envelope.encode(class_id, payload or pb.Greet(name="ada"))
    doc: dict[str, object] = {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": {
                "tq_class": class_id,
                "tq_task_id": "t" * 32,
                "tq_expected_eta": "1796284800.250000",
            },
            "messageId": "m-1",
            "publishTime": "2026-12-03T10:00:00.5Z",
        },
        "subscription": SUBSCRIPTION,
    }
    if attempt is not None:
        doc["deliveryAttempt"] = attempt
    return json.dumps(doc).encode()


async def post(
    disp: tq.Dispatcher, issuer: LocalIssuer, raw: bytes, token: str | None = "valid"
) -> httpx.Response:
    app = tq.pubsub.app(
        disp, auth=tq.asgi.OIDCVerifier(issuer.certs_url), authorized_pushers=[PUSHER]
    )
    headers = {"Content-Type": "application/json"}
    if token == "valid":
        token = issuer.mint(email=PUSHER, audience=f"https://{HOST}/push/audit")
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"https://{HOST}") as c:
        return await c.post("/push/audit", content=raw, headers=headers)


async def test_pushed_message_runs_its_handler_with_pubsub_execution_info(
    disp: tq.Dispatcher, issuer: LocalIssuer, handlers: Handlers
) -> None:
    r = await post(disp, issuer, body(attempt=3))
    assert r.status_code == 200
    ((payload, info),) = handlers.seen
    assert payload == pb.Greet(name="ada")
    assert info.task_class == "greet"
    assert info.delivery_attempt == 3
    assert info.execution_count == 2
    assert info.task_id == "t" * 32  # the tq_task_id attribute, the same on duplicates
    assert info.message_id == "m-1"
    assert info.subscription == info.queue == "audit"
    assert info.eta == dt.datetime(2026, 12, 3, 10, 0, 0, 500000, tzinfo=dt.UTC)  # published
    # When the task was added, the same on every publish of it (tq.txn.marker_key uses it).
    assert info.expected_eta == dt.datetime(2026, 12, 3, 8, 0, 0, 250000, tzinfo=dt.UTC)


async def test_delivery_attempt_is_none_where_pubsub_does_not_say(
    disp: tq.Dispatcher, issuer: LocalIssuer, handlers: Handlers
) -> None:
    assert (await post(disp, issuer, body())).status_code == 200
    assert handlers.seen[0][1].delivery_attempt is None


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "auth_no_token"),
        ("forged", "auth_bad_signature"),
        ("wrong-email", "auth_email_not_allowed"),
        ("wrong-audience", "auth_wrong_audience"),
    ],
)
async def test_push_without_a_good_token_is_refused_with_403(
    disp: tq.Dispatcher, issuer: LocalIssuer, handlers: Handlers, token: str | None, reason: str
) -> None:
    if token == "forged":  # signed by a key Google's certificates do not hold
        token = issuer.mint(email=PUSHER, audience=f"https://{HOST}", key=SigningKey.generate())
    elif token == "wrong-email":
        token = issuer.mint(email="someone@else.example", audience=f"https://{HOST}")
    elif token == "wrong-audience":
        token = issuer.mint(email=PUSHER, audience="https://other.example.com")
    before = _metrics.value("tq_pushes_rejected", reason=reason)
    r = await post(disp, issuer, body(), token=token)
    assert r.status_code == 403
    assert handlers.seen == []
    assert _metrics.value("tq_pushes_rejected", reason=reason) == before + 1


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (tq.Fatal("never"), 202),  # acked: dropped, logged as an error
        (tq.Ignore("skip"), 204),  # acked
        (tq.Retry("later"), 429),  # nacked: redelivered
        (tq.Transient("blip"), 500),  # nacked
        (RuntimeError("bug"), 500),  # nacked
    ],
)
async def test_handler_outcome_maps_to_ack_or_nack(
    disp: tq.Dispatcher,
    issuer: LocalIssuer,
    handlers: Handlers,
    error: BaseException,
    status: int,
) -> None:
    handlers.raise_ = error
    r = await post(disp, issuer, body())
    assert r.status_code == status
    assert (status in tq.pubsub.ACK_STATUSES) == (status < 300)


async def test_message_of_an_unknown_class_is_acked_and_counted(
    disp: tq.Dispatcher, issuer: LocalIssuer, handlers: Handlers
) -> None:
    before = _metrics.value("tq_pushes_rejected", reason="unknown_class")
    r = await post(disp, issuer, body("someone-elses", pb.Greet()))
    assert r.status_code == 204  # acked: Pub/Sub will not deliver it again
    assert _metrics.value("tq_pushes_rejected", reason="unknown_class") == before + 1
    assert handlers.seen == []


async def test_class_without_handler_is_nacked_until_one_is_attached(issuer: LocalIssuer) -> None:
    d = tq.Dispatcher(cloud_project="proj")
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, topic="greets")
    )
    assert (await post(d, issuer, body())).status_code == 404


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"subscription": "s"}',
        b'{"message": {"data": "***"}}',
        body(data=b"not an envelope"),
    ],
)
async def test_bad_push_body_is_nacked_with_400(
    disp: tq.Dispatcher, issuer: LocalIssuer, handlers: Handlers, raw: bytes
) -> None:
    r = await post(disp, issuer, raw)
    assert r.status_code == 400
    assert handlers.seen == []


def test_push_body_round_trips() -> None:
    msg = tq.pubsub.Received(
        data=b"\x00\x01data",
        attributes={"tq_class": "greet"},
        message_id="42",
        publish_time=dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
        delivery_attempt=2,
        subscription=SUBSCRIPTION,
        ordering_key="k",
    )
    from tq.pubsub._message import parse_push_body, push_body

    assert parse_push_body(push_body(msg)) == msg
