"""The README's quick start: one task class, its handler, the push endpoint.

Production: Cloud Tasks pushes to https://app.example.com/internal/tasks/...
with an OIDC token signed as `push_as`, which the endpoint verifies.
Locally, against the Cloud Tasks API emulator, set TQ_CLOUDTASKS_ENDPOINT:
tasks then go to the emulator and come back over plain HTTP to this app on
127.0.0.1:8080, with authentication off (the emulator signs no tokens).

    uvicorn examples.quickstart.app:app --port 8080    # serve the pushes
    python -m examples.quickstart.app Ada             # add a task
"""

from __future__ import annotations

import os
import sys

from starlette.applications import Starlette
from starlette.routing import Mount

import tq
import tq.asgi
from examples.quickstart import tasks_pb2 as pb

EMULATOR = os.environ.get("TQ_CLOUDTASKS_ENDPOINT")  # e.g. "127.0.0.1:8123"

disp = tq.Dispatcher(
    cloud_project="my-project",
    cloud_region="us-central1",
    default_target_host="127.0.0.1:8080" if EMULATOR else "app.example.com",
    target_scheme="http" if EMULATOR else "https",
    push_as="tq-pusher@my-project.iam.gserviceaccount.com",
    submitter=tq.CloudTasksSubmitter(endpoint=EMULATOR) if EMULATOR else None,
)


@disp.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue="greetings")
async def greet(task: pb.Greet) -> None:
    info = tq.execution_info()
    print(f"hello, {task.name}! (attempt {info.execution_count + 1}, queue {info.queue})")


def greet_later(name: str) -> None:
    """Adds a task; Cloud Tasks pushes it back to `greet`."""
    disp.add_task(tq.Task(payload=pb.Greet(name=name), title=f"greet-{name}"))


app = Starlette(
    routes=[
        Mount(
            "/internal/tasks",
            tq.asgi.app(disp, auth=tq.asgi.INSECURE_NO_AUTH if EMULATOR else None),
        )
    ]
)

if __name__ == "__main__":
    greet_later(sys.argv[1] if len(sys.argv) > 1 else "world")
