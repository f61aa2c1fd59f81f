"""The authentication matrix of the push and sweep endpoints, under real uvicorn.

Every way a caller can fail to authenticate, against both endpoints, over
TCP: 403 with the reason, counted (`tq_pushes_rejected` /
`tq_sweeps_rejected`, reason `auth_<reason>`), and no handler or sweep run.
Then the audience rule end to end: the audience the sending side puts in
the task (what Cloud Tasks signs) against what the receiving side accepts
for the Host it sees (docs/push-endpoint.md, "The audience rule").

tests/unit/test_asgi.py and test_auth.py check the verifier's details in
process; this is the same contract seen from outside the server.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from google.protobuf.message import Message

import tq
from tests._services.push_app import push_app
from tests._services.uvicorn_server import ServedApp
from tests.testpb import payloads_pb2 as pb
from tq import _metrics, _request
from tqtesting.oidc import LocalIssuer, SigningKey

PUSHER = "tq-push@p.iam.gserviceaccount.com"
LAUNCHER = "scheduler@p.iam.gserviceaccount.com"
ELSEWHERE = "tasks.internal:8443"  # the target host of class "count"
PUSH_PATH = "/internal/tasks/t/greet"
SWEEP_PATH = "/internal/tasks/c/sweep"


class _Sweeper:
    def __init__(self) -> None:
        self.sweeps = 0

    def sweep(self, dispatcher: tq.Dispatcher) -> None:
        self.sweeps += 1

    async def sweep_async(self, dispatcher: tq.Dispatcher) -> None:
        self.sweeps += 1


@dataclasses.dataclass
class Server:
    served: ServedApp
    dispatcher: tq.Dispatcher
    issuer: LocalIssuer
    handled: list[Message]
    sweeper: _Sweeper

    @property
    def host(self) -> str:
        return self.served.netloc

    def post(self, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> httpx.Response:
        with httpx.Client(base_url=self.served.url, timeout=30) as c:
            return c.post(path, headers=headers, content=body)

    def get(self, path: str, headers: list[tuple[str, str]]) -> httpx.Response:
        with httpx.Client(base_url=self.served.url, timeout=30) as c:
            return c.get(path, headers=headers)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    handled: list[Message] = []
    sweeper = _Sweeper()
    with LocalIssuer() as issuer:
        d = tq.Dispatcher(cloud_project="p", cloud_region="us-central1", push_as=PUSHER)
        d.configure(sweeper=sweeper)
        for class_id, proto, host in (("greet", pb.Greet, None), ("count", pb.Count, ELSEWHERE)):
            d.task_class(
                id=class_id,
                prototype=proto,
                kind=tq.Kind.NON_TRANSACTIONAL,
                queue="q",
                target_host=host,
            )(handled.append)
        app = push_app(d, certs_url=issuer.certs_url, authorized_launchers=[LAUNCHER])
        with ServedApp(app) as served:
            d.configure(default_target_host=served.netloc)
            yield Server(served, d, issuer, handled, sweeper)


@pytest.fixture
def srv(server: Server) -> Iterator[Server]:
    _metrics.reset()
    server.handled.clear()
    server.sweeper.sweeps = 0
    yield server
    server.dispatcher.configure(push_audience=None)


class _Capture:
    def __init__(self) -> None:
        self.requests: list[Any] = []

    def submit(self, submission: tq.Submission) -> None:
        self.requests.append(submission.request)

    async def submit_async(self, submission: tq.Submission) -> None:
        self.requests.append(submission.request)


def built(d: tq.Dispatcher, payload: Message) -> tuple[str, dict[str, str], bytes, str]:
    """(URL, headers, body, token audience) of the task add_task makes: what Cloud Tasks gets."""
    cap = _Capture()
    with tq.use_submitter(cap):
        d.add_task(tq.Task(payload=payload))
    [req] = cap.requests
    url, _, headers, body = _request.http_parts(req)
    return url, headers, body, req.task.http_request.oidc_token.audience


# The matrix.


def _in_an_hour() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)


Mint = Callable[[LocalIssuer, str, str], list[tuple[str, str]]]


def _token(**claims: Any) -> Mint:
    """Authorization from a token for the endpoint's own caller and audience, altered."""

    def make(issuer: LocalIssuer, email: str, audience: str) -> list[tuple[str, str]]:
        args: dict[str, Any] = {"email": email, "audience": audience} | claims
        return [("Authorization", issuer.bearer(**args))]

    return make


def _raw(*headers: tuple[str, str]) -> Mint:
    return lambda issuer, email, audience: list(headers)


def _twice(issuer: LocalIssuer, email: str, audience: str) -> list[tuple[str, str]]:
    token = issuer.bearer(email=email, audience=audience)
    return [("Authorization", token), ("Authorization", token)]


MATRIX: list[tuple[str, str, Mint]] = [
    ("no_token", "no_token", _raw()),
    ("bearer_without_token", "no_token", _raw(("Authorization", "Bearer"))),
    ("basic_auth", "no_token", _raw(("Authorization", "Basic dXNlcjpwYXNz"))),
    ("not_a_jwt", "malformed", _raw(("Authorization", "Bearer not-a-jwt"))),
    ("undecodable_jwt", "malformed", _raw(("Authorization", "Bearer a.b.c"))),
    ("two_authorization_headers", "malformed", _twice),
    ("unknown_key", "bad_signature", _token(key=SigningKey.generate())),
    ("unsigned", "bad_signature", _token()),  # its signature is cut off in the test
    ("expired", "expired", _token(expired=True)),
    ("issued_in_the_future", "not_yet_valid", _token(issued_at=_in_an_hour())),
    ("wrong_issuer", "wrong_issuer", _token(iss="https://issuer.example.com")),
    ("wrong_audience", "wrong_audience", _token(aud="https://elsewhere.example.com")),
    ("email_not_allowed", "email_not_allowed", _token(email="mallory@p.iam.gserviceaccount.com")),
    ("unverified_email", "unverified_email", _token(email_verified=False)),
    ("no_email", "email_not_allowed", _token(email=None)),
    (
        "app_engine_headers_off_app_engine",
        "no_token",
        _raw(
            ("X-AppEngine-QueueName", "q"),
            ("X-Appengine-Cron", "true"),
            ("X-AppEngine-TaskName", "t1"),
        ),
    ),
]


def _unsigned(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    name, value = headers[0]
    head, claims, _ = value.removeprefix("Bearer ").split(".")
    return [(name, f"Bearer {head}.{claims}.")]


@pytest.mark.parametrize("endpoint", ["push", "sweep"])
@pytest.mark.parametrize(("case", "reason", "mint"), MATRIX, ids=[m[0] for m in MATRIX])
def test_unauthenticated_callers_get_403_counted_and_run_nothing(
    srv: Server, endpoint: str, case: str, reason: str, mint: Mint
) -> None:
    if endpoint == "push":
        _url, task_headers, body, audience = built(srv.dispatcher, pb.Greet(name=case))
        headers = mint(srv.issuer, PUSHER, audience)
    else:
        task_headers, body = {}, b""
        headers = mint(srv.issuer, LAUNCHER, f"https://{srv.host}")
    if case == "unsigned":
        headers = _unsigned(headers)
    headers = list(task_headers.items()) + headers

    r = srv.post(PUSH_PATH, headers, body) if endpoint == "push" else srv.get(SWEEP_PATH, headers)

    assert (r.status_code, r.text) == (403, f"auth_{reason}\n")
    metric = "tq_pushes_rejected" if endpoint == "push" else "tq_sweeps_rejected"
    assert _metrics.value(metric, reason=f"auth_{reason}") == 1
    assert _metrics.value(metric) == 1
    assert srv.handled == []
    assert srv.sweeper.sweeps == 0


def test_each_endpoint_refuses_the_other_endpoints_caller(srv: Server) -> None:
    _url, task_headers, body, audience = built(srv.dispatcher, pb.Greet(name="x"))
    as_launcher = srv.issuer.bearer(email=LAUNCHER, audience=audience)
    as_pusher = srv.issuer.bearer(email=PUSHER, audience=f"https://{srv.host}")

    push = srv.post(PUSH_PATH, [*task_headers.items(), ("Authorization", as_launcher)], body)
    sweep = srv.get(SWEEP_PATH, [("Authorization", as_pusher)])

    assert (push.status_code, push.text) == (403, "auth_email_not_allowed\n")
    assert (sweep.status_code, sweep.text) == (403, "auth_email_not_allowed\n")
    assert (srv.handled, srv.sweeper.sweeps) == ([], 0)


def test_authenticated_callers_are_served(srv: Server) -> None:
    """The matrix's control: the same requests with a good token go through."""
    _url, task_headers, body, audience = built(srv.dispatcher, pb.Greet(name="ok"))
    push = srv.post(
        PUSH_PATH,
        [
            *task_headers.items(),
            ("Authorization", srv.issuer.bearer(email=PUSHER, audience=audience)),
        ],
        body,
    )
    sweep = srv.get(
        SWEEP_PATH,
        [("Authorization", srv.issuer.bearer(email=LAUNCHER, audience=f"https://{srv.host}"))],
    )
    assert (push.status_code, sweep.status_code) == (200, 200)
    assert (srv.handled, srv.sweeper.sweeps) == ([pb.Greet(name="ok")], 1)
    assert _metrics.value("tq_pushes_rejected") == _metrics.value("tq_sweeps_rejected") == 0


# The audience rule, sender against receiver.


@dataclasses.dataclass(frozen=True)
class AudienceCase:
    payload: Message
    push_audience: str | None  # the dispatcher's, on both sides
    host_seen: str | None  # the Host header the server gets; None: the target host
    token_audience: str | None  # None: the one the sender put in the task
    accepted: bool


AUDIENCE_CASES = {
    # Sender: https://<target host>; receiver: https://<Host>. They agree.
    "default_target_host": AudienceCase(pb.Greet(), None, None, None, True),
    "class_target_host": AudienceCase(pb.Count(), None, ELSEWHERE, None, True),
    # A proxy rewrote Host: the receiver no longer recognises the audience...
    "host_rewritten_by_a_proxy": AudienceCase(pb.Greet(), None, "10.0.0.7:8080", None, False),
    # ...unless both sides name it with push_audience.
    "host_rewritten_with_push_audience": AudienceCase(
        pb.Greet(), "https://tasks.example.com", "10.0.0.7:8080", None, True
    ),
    # push_audience is then the only audience accepted.
    "push_audience_refuses_the_host_audience": AudienceCase(
        pb.Greet(), "https://tasks.example.com", None, "https://{host}", False
    ),
    # Cloud Tasks' own default (a task with a service account, no audience): the URL.
    "full_url_as_cloud_tasks_defaults": AudienceCase(
        pb.Greet(), None, None, "https://{host}" + PUSH_PATH, True
    ),
    "full_url_with_the_scheme_the_server_sees": AudienceCase(
        pb.Greet(), None, None, "http://{host}" + PUSH_PATH, True
    ),
    "bare_host_without_scheme": AudienceCase(pb.Greet(), None, None, "{host}", False),
    "other_port": AudienceCase(pb.Greet(), None, None, "https://127.0.0.1:1", False),
}


@pytest.mark.parametrize("case", list(AUDIENCE_CASES))
def test_audience_rule_sender_and_receiver(srv: Server, case: str) -> None:
    c = AUDIENCE_CASES[case]
    srv.dispatcher.configure(push_audience=c.push_audience)
    url, task_headers, body, sent_audience = built(srv.dispatcher, c.payload)
    host = c.host_seen or url.split("/")[2]
    expected_sent = c.push_audience or f"https://{url.split('/')[2]}"
    assert sent_audience == expected_sent  # the sender's half
    audience = (c.token_audience or sent_audience).format(host=host)
    token = srv.issuer.bearer(email=PUSHER, audience=audience)
    path = url.split("/", 3)[3]

    r = srv.post(
        "/" + path, [*task_headers.items(), ("Host", host), ("Authorization", token)], body
    )

    if c.accepted:
        assert r.status_code == 200, r.text
        assert srv.handled == [c.payload]
    else:
        assert (r.status_code, r.text) == (403, "auth_wrong_audience\n")
        assert srv.handled == []
