"""FastAPI with tq: a signup route adding a user and its welcome task in one transaction.

The route uses an SQLAlchemy AsyncSession; `tq.txn.sql.transaction_async`
makes its transaction the one `add_task_async` writes into, so the welcome
task exists if and only if the user does. The app mounts tq's push endpoint,
and its lifespan does tq's start-up and shutdown: the tables, the database
queue's worker pushing into this app, and a final drain. Locally it runs on
the database queue in a SQLite file (no cloud account):

    uvicorn examples.fastapi_app.app:app --port 8000
    curl -X POST localhost:8000/signup -H 'content-type: application/json' \\
         -d '{"email": "ann@example.com"}'
    curl localhost:8000/users/1          # {"id": 1, ..., "welcomed": true}

In production, give the dispatcher a Cloud Tasks project, region, host and
`push_as` instead of the database queue, and mount the endpoint with
authentication on (`tq.asgi.app(disp)`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import Boolean, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import tq
import tq.asgi
import tq.dbqueue
import tq.txn.sql
from examples.fastapi_app import users_pb2 as pb

DATABASE = os.environ.get("APP_DATABASE", "fastapi-app.db")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    welcomed: Mapped[bool] = mapped_column(Boolean, default=False)


engine = create_async_engine(f"sqlite+aiosqlite:///{DATABASE}")
Session = async_sessionmaker(engine, expire_on_commit=False)
queue_engine = tq.dbqueue.sqlite_engine(DATABASE)  # the same file, for tq's worker and store

disp = tq.Dispatcher(
    cloud_project="local",
    cloud_region="local",
    default_target_host=os.environ.get("APP_HOST", "127.0.0.1:8000"),
    target_scheme="http",
    submitter=tq.dbqueue.DbQueueSubmitter(queue_engine),
)


@disp.task_class(id="welcome", prototype=pb.Welcome, kind=tq.Kind.TRANSACTIONAL, queue="emails")
async def welcome(task: pb.Welcome) -> None:
    # A real app sends the email here; the example records that it would have.
    async with Session.begin() as session:
        user = await session.get(User, task.user_id)
        if user is None:
            raise tq.Fatal(f"no user {task.user_id}")  # 202: dropped, logged
        user.welcomed = True


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    store = tq.txn.sql.SQLStore(queue_engine, name="fastapi-app")
    store.create_schema()
    tq.dbqueue.create_schema(queue_engine)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        # The database queue's worker, pushing into this app in-process.
        async with tq.dbqueue.Worker(queue_engine, app=app, dispatcher=disp) as worker:
            await worker.start()
            yield
            await worker.stop()
    finally:
        await tq.txn.sql.drain()
        store.close()
        await engine.dispose()
        queue_engine.dispose()


app = FastAPI(lifespan=lifespan)
# Local only: the database queue's pushes carry no token here.
app.mount("/internal/tasks", tq.asgi.app(disp, auth=tq.asgi.INSECURE_NO_AUTH))


class Signup(BaseModel):
    email: str


@app.post("/signup", status_code=201)
async def signup(body: Signup) -> dict[str, int]:
    try:
        async with tq.txn.sql.transaction_async(Session) as session:
            user = User(email=body.email)
            session.add(user)
            await session.flush()  # the user's ID, for the task
            # Written in this transaction: no user, no task; a task for every user.
            await disp.add_task_async(
                tq.Task(payload=pb.Welcome(user_id=user.id, email=user.email))
            )
    except IntegrityError:
        raise HTTPException(409, "that email has signed up already") from None
    return {"id": user.id}


@app.get("/users/{user_id}")
async def get_user(user_id: int) -> dict[str, object]:
    async with Session() as session:
        user = (await session.execute(select(User).where(User.id == user_id))).scalar_one_or_none()
    if user is None:
        raise HTTPException(404, "no such user")
    return {"id": user.id, "email": user.email, "welcomed": user.welcomed}
