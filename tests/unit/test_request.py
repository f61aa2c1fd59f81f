"""Building the Cloud Tasks CreateTaskRequest of a task."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from google.protobuf.message import Message

import tq
from tests.testpb import payloads_pb2 as pb
from tq import _envelope, _request
from tq._request import EXPECTED_ETA_HEADER, MAX_TASK_SIZE, Target
from tq._task import MAX_URI_LENGTH

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HOST = "app.example.com"
QUEUE = "projects/proj/locations/us-central1/queues/default"


def target(**kw: object) -> Target:
    opts: dict[str, object] = {
        "cloud_project": "proj",
        "cloud_region": "us-central1",
        "default_target_host": HOST,
        "push_as": None,
        "push_audience": None,
        "app_engine": False,
    }
    opts.update(kw)
    return Target(**opts)  # type: ignore[arg-type]


def klass(**kw: object) -> tq.TaskClass:
    opts: dict[str, object] = {
        "id": "greet",
        "prototype": pb.Greet,
        "kind": tq.Kind.NON_TRANSACTIONAL,
        "queue": "default",
    }
    opts.update(kw)
    c = tq.TaskClass(**opts)  # type: ignore[arg-type]
    c.validate()
    return c


def build(task: tq.Task, cls: tq.TaskClass | None = None, tgt: Target | None = None) -> Message:
    task.validate()
    return _request.build(cls or klass(), task, tgt or target(), now=NOW, task_id=None)


def test_http_request_posts_the_envelope_to_the_class_url() -> None:
    req = build(tq.Task(payload=pb.Greet(name="ada")))
    assert req.parent == QUEUE  # type: ignore[attr-defined]
    url, method, headers, body = _request.http_parts(req)
    assert url == f"https://{HOST}/internal/tasks/t/greet"
    assert method == _request._POST
    assert headers["Content-Type"] == "application/json"
    assert float(headers[EXPECTED_ETA_HEADER]) == NOW.timestamp()
    class_id, type_name, json_body = _envelope.peek(body)
    assert (class_id, type_name) == ("greet", "tq.tests.Greet")
    assert _envelope.decode_body(json_body, pb.Greet) == pb.Greet(name="ada")
    assert not req.task.name  # type: ignore[attr-defined]
    assert not req.task.HasField("schedule_time")  # type: ignore[attr-defined]


def test_task_id_names_the_task_in_its_queue() -> None:
    req = _request.build(klass(), tq.Task(payload=pb.Greet()), target(), now=NOW, task_id="abc")
    assert req.task.name == f"{QUEUE}/tasks/abc"  # type: ignore[attr-defined]


def test_title_is_the_last_url_segment() -> None:
    url = _request.http_parts(build(tq.Task(payload=pb.Greet(), title="user:42/welcome")))[0]
    assert url == f"https://{HOST}/internal/tasks/t/greet/user:42/welcome"


def test_title_with_non_ascii_is_percent_encoded() -> None:
    url = _request.http_parts(build(tq.Task(payload=pb.Greet(), title="café")))[0]
    assert url.endswith("/greet/caf%C3%A9")


@pytest.mark.parametrize("title", ["has space", "tab\there", "q?x", "frag#x", "100%", "new\nline"])
def test_titles_with_spaces_or_reserved_characters_are_refused(title: str) -> None:
    with pytest.raises(tq.ValidationError, match="title"):
        tq.Task(payload=pb.Greet(), title=title).validate()


def test_uri_up_to_2083_characters_is_accepted_and_longer_refused() -> None:
    base = len(f"https://{HOST}/internal/tasks/t/greet/")
    ok = "x" * (MAX_URI_LENGTH - base)
    url = _request.http_parts(build(tq.Task(payload=pb.Greet(), title=ok)))[0]
    assert len(url) == MAX_URI_LENGTH
    with pytest.raises(tq.ValidationError, match="2083"):
        build(tq.Task(payload=pb.Greet(), title=ok + "x"))


def test_routing_prefix_and_class_target_host_shape_the_url() -> None:
    cls = klass(routing_prefix="/tq/", target_host="worker.example.com")
    url = _request.http_parts(build(tq.Task(payload=pb.Greet()), cls))[0]
    assert url == "https://worker.example.com/tq/greet"


def test_http_scheme_for_local_pushes() -> None:
    req = build(tq.Task(payload=pb.Greet()), tgt=target(target_scheme="http"))
    assert _request.http_parts(req)[0].startswith("http://app.example.com/")


def test_missing_target_host_is_a_config_error() -> None:
    with pytest.raises(tq.ConfigError, match="no target host"):
        build(tq.Task(payload=pb.Greet()), tgt=target(default_target_host=None))


def test_short_queue_needs_project_and_region_full_queue_does_not() -> None:
    with pytest.raises(tq.ConfigError, match="cloud_project and cloud_region"):
        build(tq.Task(payload=pb.Greet()), tgt=target(cloud_project=None))
    full = "projects/other/locations/europe-west1/queues/q"
    req = build(tq.Task(payload=pb.Greet()), klass(queue=full), target(cloud_project=None))
    assert req.parent == full  # type: ignore[attr-defined]


def test_a_task_of_its_own_queue_goes_there_and_is_named_in_it() -> None:
    task = tq.Task(payload=pb.Greet(), queue="emails")
    task.validate()
    req = _request.build(klass(), task, target(), now=NOW, task_id="abc")
    emails = "projects/proj/locations/us-central1/queues/emails"
    assert req.parent == emails  # type: ignore[attr-defined]
    assert req.task.name == f"{emails}/tasks/abc"  # type: ignore[attr-defined]
    # The class's own queue stays the default of the class's other tasks.
    assert build(tq.Task(payload=pb.Greet())).parent == QUEUE  # type: ignore[attr-defined]
    full = "projects/other/locations/europe-west1/queues/q"
    assert build(tq.Task(payload=pb.Greet(), queue=full)).parent == full  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "queue", ["", "has space", "under_score", "x" * 101, "projects/p/queues/q"]
)
def test_a_malformed_task_queue_is_refused(queue: str) -> None:
    with pytest.raises(tq.ValidationError, match=r"Task\.queue"):
        tq.Task(payload=pb.Greet(), queue=queue).validate()


# Timing.


def test_delay_sets_schedule_time_and_expected_eta() -> None:
    req = build(tq.Task(payload=pb.Greet(), delay=dt.timedelta(minutes=5)))
    eta = req.task.schedule_time.ToDatetime(dt.UTC)  # type: ignore[attr-defined]
    assert eta == NOW + dt.timedelta(minutes=5)
    headers = _request.http_parts(req)[2]
    assert float(headers[EXPECTED_ETA_HEADER]) == eta.timestamp()


def test_eta_in_another_timezone_is_stored_in_utc() -> None:
    tz = dt.timezone(dt.timedelta(hours=-7))
    eta = dt.datetime(2026, 1, 1, 1, tzinfo=tz)
    req = build(tq.Task(payload=pb.Greet(), eta=eta))
    assert req.task.schedule_time.ToDatetime(dt.UTC) == eta  # type: ignore[attr-defined]


def test_delay_and_eta_exclude_each_other() -> None:
    with pytest.raises(tq.ValidationError, match="not both"):
        tq.Task(payload=pb.Greet(), delay=dt.timedelta(1), eta=NOW).validate()


def test_eta_more_than_30_days_ahead_is_refused() -> None:
    build(tq.Task(payload=pb.Greet(), delay=dt.timedelta(days=30)))
    with pytest.raises(tq.ValidationError, match="30 days"):
        build(tq.Task(payload=pb.Greet(), delay=dt.timedelta(days=30, seconds=1)))
    with pytest.raises(tq.ValidationError, match="30 days"):
        build(tq.Task(payload=pb.Greet(), eta=NOW + dt.timedelta(days=31)))


def test_dispatch_deadline_is_carried() -> None:
    req = build(tq.Task(payload=pb.Greet()), klass(dispatch_deadline_s=120))
    assert req.task.dispatch_deadline.seconds == 120  # type: ignore[attr-defined]


# Size.


def test_task_over_1mb_is_refused_with_its_size() -> None:
    build(tq.Task(payload=pb.Blob(data=b"x" * 700_000)), klass(id="blob", prototype=pb.Blob))
    with pytest.raises(tq.PayloadTooLarge, match=str(MAX_TASK_SIZE)):
        build(tq.Task(payload=pb.Blob(data=b"x" * 800_000)), klass(id="blob", prototype=pb.Blob))


# Authentication.


def test_push_as_adds_an_oidc_token_with_the_host_audience() -> None:
    req = build(tq.Task(payload=pb.Greet()), tgt=target(push_as="tq@proj.iam.gserviceaccount.com"))
    token = req.task.http_request.oidc_token  # type: ignore[attr-defined]
    assert token.service_account_email == "tq@proj.iam.gserviceaccount.com"
    assert token.audience == f"https://{HOST}"


def test_push_audience_overrides_the_default_audience() -> None:
    tgt = target(push_as="tq@p.iam.gserviceaccount.com", push_audience="tq-pushes")
    req = build(tq.Task(payload=pb.Greet()), klass(target_host="w.example.com"), tgt)
    assert req.task.http_request.oidc_token.audience == "tq-pushes"  # type: ignore[attr-defined]


def test_without_push_as_there_is_no_token() -> None:
    req = build(tq.Task(payload=pb.Greet()))
    assert not req.task.http_request.HasField("oidc_token")  # type: ignore[attr-defined]


def test_dispatcher_options_reach_the_request() -> None:
    s = _Keep()
    d = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host=HOST,
        push_as="tq@proj.iam.gserviceaccount.com", submitter=s,
    )  # fmt: skip
    d.register_task_class(klass())
    d.add_task(tq.Task(payload=pb.Greet(), title="x"))
    h = s.subs[0].request.task.http_request  # type: ignore[attr-defined]
    assert h.url == f"https://{HOST}/internal/tasks/t/greet/x"
    assert h.oidc_token.service_account_email == "tq@proj.iam.gserviceaccount.com"


class _Keep:
    def __init__(self) -> None:
        self.subs: list[tq.Submission] = []

    def submit(self, submission: tq.Submission) -> None:
        self.subs.append(submission)

    async def submit_async(self, submission: tq.Submission) -> None:
        self.subs.append(submission)


# App Engine.


def test_app_engine_request_has_a_relative_uri_and_routing() -> None:
    req = build(tq.Task(payload=pb.Greet(), title="t"), tgt=target(app_engine=True))
    t = req.task  # type: ignore[attr-defined]
    assert t.HasField("app_engine_http_request")
    assert not t.HasField("http_request")
    h = t.app_engine_http_request
    assert h.relative_uri == "/internal/tasks/t/greet/t"
    assert h.app_engine_routing.host == HOST
    uri, _, headers, body = _request.http_parts(req)
    assert uri == "/internal/tasks/t/greet/t"
    assert headers["Content-Type"] == "application/json"
    assert _envelope.peek(body)[0] == "greet"


def test_app_engine_request_without_host_uses_default_routing() -> None:
    req = build(tq.Task(payload=pb.Greet()), tgt=target(app_engine=True, default_target_host=None))
    h = req.task.app_engine_http_request  # type: ignore[attr-defined]
    assert not h.HasField("app_engine_routing")


# CustomPayload.


def test_custom_payload_replaces_the_envelope() -> None:
    def custom(p: Message) -> tq.CustomPayload:
        return tq.CustomPayload(
            body=b"raw:" + p.name.encode(),  # type: ignore[attr-defined]
            relative_uri="/hooks/greet?x=1",
            method="PUT",
            meta={"X-Custom": "yes"},
        )

    req = build(tq.Task(payload=pb.Greet(name="ada")), klass(custom=custom))
    url, method, headers, body = _request.http_parts(req)
    assert url == f"https://{HOST}/hooks/greet?x=1"
    assert method == _request._METHODS["PUT"]
    assert body == b"raw:ada"
    assert headers["X-Custom"] == "yes"
    assert "Content-Type" not in headers
    assert EXPECTED_ETA_HEADER in headers


def test_custom_hook_returning_none_keeps_the_envelope() -> None:
    req = build(tq.Task(payload=pb.Greet()), klass(custom=lambda p: None))
    body = _request.http_parts(req)[3]
    assert json.loads(body)["class"] == "greet"


def test_custom_payload_with_a_bad_uri_or_method_is_refused() -> None:
    with pytest.raises(tq.ValidationError, match="must start with '/'"):
        build(
            tq.Task(payload=pb.Greet()),
            klass(custom=lambda p: tq.CustomPayload(body=b"", relative_uri="hooks")),
        )
    with pytest.raises(tq.ValidationError, match="unsupported HTTP method"):
        build(
            tq.Task(payload=pb.Greet()),
            klass(custom=lambda p: tq.CustomPayload(body=b"", relative_uri="/h", method="BREW")),
        )


def test_requests_follow_configure_and_a_changed_class() -> None:
    s = _Keep()
    d = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host=HOST, submitter=s
    )
    cls = d.register_task_class(klass())
    d.add_task(tq.Task(payload=pb.Greet()))
    d.configure(default_target_host="other.example.com", push_as="tq@p.iam.gserviceaccount.com")
    d.add_task(tq.Task(payload=pb.Greet()))
    cls.routing_prefix = "/moved/"
    d.add_task(tq.Task(payload=pb.Greet()))
    hs = [sub.request.task.http_request for sub in s.subs]  # type: ignore[attr-defined]
    assert [h.url for h in hs] == [
        f"https://{HOST}/internal/tasks/t/greet",
        "https://other.example.com/internal/tasks/t/greet",
        "https://other.example.com/moved/greet",
    ]
    assert not hs[0].HasField("oidc_token")
    assert hs[1].oidc_token.service_account_email == "tq@p.iam.gserviceaccount.com"
