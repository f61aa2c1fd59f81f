"""Flask with tq: a WSGI app serving tq's push endpoint and adding tasks in its transactions.

`tq.wsgi.app(disp)` is tq's push endpoint for WSGI (the same envelope,
statuses and OIDC authentication as `tq.asgi`), mounted under
/internal/tasks with Werkzeug's DispatcherMiddleware around the Flask
app's `wsgi_app`. The signup route
adds a user and its welcome task inside `tq.txn.sql.transaction(Session)`:
the task exists if and only if the user does. Tasks go to the database
queue in the same SQLite file; a worker process delivers them over HTTP
to each task's URL, with a token minted for `PUSH_AS`:

    flask --app examples.flask_app.app run --port 5000   # or any WSGI server on `app`
    tq worker --db flask-app.db --signer examples.orders.signing:sign
    curl -X POST localhost:5000/signup -H 'content-type: application/json' \\
         -d '{"email": "ann@example.com"}'

Authentication is on: pushes need an OIDC token for `PUSH_AS` (Cloud Tasks
signs them in production; examples/orders/signing.py mints them for a
self-hosted worker). The test (tests/examples/test_web_frameworks.py)
serves `app` with a real WSGI server and signs with a local issuer.
"""

from __future__ import annotations

import os

from flask import Flask, abort, jsonify, request
from sqlalchemy import Boolean, String
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Response

import tq
import tq.dbqueue
import tq.txn.sql
import tq.wsgi
from examples.flask_app import users_pb2 as pb

DATABASE = os.environ.get("APP_DATABASE", "flask-app.db")
PUSH_AS = "tq-pusher@my-project.iam.gserviceaccount.com"


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    welcomed: Mapped[bool] = mapped_column(Boolean, default=False)


engine = tq.dbqueue.sqlite_engine(DATABASE)
Session = sessionmaker(engine, expire_on_commit=False)
# The outbox store of the database; `tq sweep --db flask-app.db` sweeps it.
store = tq.txn.sql.SQLStore(engine, name="flask-app", register=False)

disp = tq.Dispatcher(
    cloud_project="local",
    cloud_region="local",
    default_target_host=os.environ.get("APP_HOST", "127.0.0.1:5000"),
    target_scheme="http",
    push_as=PUSH_AS,
    submitter=tq.dbqueue.DbQueueSubmitter(engine),
)


@disp.task_class(id="welcome", prototype=pb.Welcome, kind=tq.Kind.TRANSACTIONAL, queue="emails")
def welcome(task: pb.Welcome) -> None:
    with Session.begin() as session:
        user = session.get(User, task.user_id)
        if user is None:
            raise tq.Fatal(f"no user {task.user_id}")
        user.welcomed = True


def create_tables() -> None:
    store.create_schema()
    tq.dbqueue.create_schema(engine)
    Base.metadata.create_all(engine)


app = Flask(__name__)


@app.post("/signup")
def signup() -> tuple[Response, int]:
    email = str((request.get_json(silent=True) or {}).get("email", ""))
    if not email:
        abort(400)
    try:
        with tq.txn.sql.transaction(Session, store=store) as session:
            user = User(email=email)
            session.add(user)
            session.flush()  # the user's ID, for the task
            # Written in this transaction: no user, no task; a task for every user.
            disp.add_task(tq.Task(payload=pb.Welcome(user_id=user.id, email=email)))
    except IntegrityError:
        return jsonify(error="that email has signed up already"), 409
    return jsonify(id=user.id), 201


@app.get("/users/<int:user_id>")
def get_user(user_id: int) -> Response:
    with Session() as session:
        user = session.get(User, user_id)
        if user is None:
            abort(404)
        return jsonify(id=user.id, email=user.email, welcomed=user.welcomed)


# tq's push endpoint (OIDC authentication on) under /internal/tasks, beside
# Flask's routes. TQ_CERTS_URL points it at a local issuer in tests.
push_endpoint = tq.wsgi.app(
    disp, certs_url=os.environ.get("TQ_CERTS_URL", tq.wsgi.GOOGLE_CERTS_URL)
)
app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, {"/internal/tasks": push_endpoint}
)
create_tables()
