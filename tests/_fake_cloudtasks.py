"""A Cloud Tasks API of our own over real gRPC, for what the emulator does not do.

The emulator neither refuses duplicate task names nor implements DeleteTask
(see FACTS); this server does both, as the real service documents them:
CreateTask answers ALREADY_EXISTS for a name in use (or deleted or run
recently: names are never freed here), DeleteTask deletes a waiting task or
answers NOT_FOUND. It serves on a free loopback port, so
`tq.CloudTasksSubmitter(endpoint=...)` talks to it through the real client
and transport. Scripted failures (`fail`) come before the normal answer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from google.cloud.tasks_v2.types import cloudtasks, task
from google.protobuf import empty_pb2

SERVICE = "google.cloud.tasks.v2.CloudTasks"
_CreateTaskRequest = cloudtasks.CreateTaskRequest.pb()
_DeleteTaskRequest = cloudtasks.DeleteTaskRequest.pb()
_Task = task.Task.pb()


class FakeCloudTasks:
    """The state and the calls of the fake service (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: set[str] = set()  # names of tasks that would still run
        self.taken: set[str] = set()  # every name ever created
        self.creates: list[Any] = []  # CreateTaskRequest messages received
        self.deletes: list[str] = []  # names DeleteTask was called with
        self.fail: dict[str, list[grpc.StatusCode]] = {"CreateTask": [], "DeleteTask": []}
        self.endpoint = ""
        self._seq = 0

    def _scripted(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            code = self.fail[method].pop(0) if self.fail[method] else None
        if code is not None:
            context.abort(code, f"scripted {code.name}")

    def create_task(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.creates.append(request)
        self._scripted("CreateTask", context)
        with self.lock:
            name = request.task.name
            if not name:
                self._seq += 1
                name = f"{request.parent}/tasks/{self._seq:020d}"
            elif name in self.taken:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"task {name} exists")
            self.taken.add(name)
            self.waiting.add(name)
        created = _Task()
        created.CopyFrom(request.task)
        created.name = name
        return created

    def delete_task(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.deletes.append(request.name)
        self._scripted("DeleteTask", context)
        with self.lock:
            if request.name not in self.waiting:
                context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.name} not found")
            self.waiting.discard(request.name)
        return empty_pb2.Empty()

    def run(self, name: str) -> None:
        """The task `name` ran to its end: it can no longer be deleted."""
        with self.lock:
            self.waiting.discard(name)


@contextlib.contextmanager
def fake_cloud_tasks() -> Iterator[FakeCloudTasks]:
    """Serves a FakeCloudTasks on a free loopback port until the block ends."""
    fake = FakeCloudTasks()
    handlers = {
        "CreateTask": grpc.unary_unary_rpc_method_handler(
            fake.create_task,
            request_deserializer=_CreateTaskRequest.FromString,
            response_serializer=_Task.SerializeToString,
        ),
        "DeleteTask": grpc.unary_unary_rpc_method_handler(
            fake.delete_task,
            request_deserializer=_DeleteTaskRequest.FromString,
            response_serializer=empty_pb2.Empty.SerializeToString,
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    fake.endpoint = f"127.0.0.1:{port}"
    try:
        yield fake
    finally:
        server.stop(grace=None)
