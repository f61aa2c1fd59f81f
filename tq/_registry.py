"""The registry of task classes: by ID and by payload type, each with one handler."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from tq._errors import ConfigError
from tq._taskclass import (
    DEFAULT_ROUTING_PREFIX,
    CustomPayload,
    Handler,
    Kind,
    SchedulePayload,
    TaskClass,
)
from tq.cron import Cron

H = TypeVar("H", bound=Handler)


class TaskClassRegistry:
    """Task classes by ID and by payload type; the base of `tq.Dispatcher`.

    An ID names one class, a payload type belongs to one class, and a class
    takes one handler, once: each is checked at registration.
    """

    def __init__(self) -> None:
        self._classes: dict[str, TaskClass] = {}
        self._by_type: dict[str, TaskClass] = {}
        self._lock = threading.Lock()

    def register_task_class(self, cls: TaskClass) -> TaskClass:
        """Adds a task class. Raises ConfigError if it is invalid or clashes."""
        cls.validate()
        with self._lock:
            if cls.id in self._classes:
                raise ConfigError(f"task class {cls.id!r} is registered already; IDs are unique")
            clash = self._by_type.get(cls.type_name)
            if clash is not None:
                raise ConfigError(
                    f"task class {cls.id!r}: prototype {cls.type_name} is used by class "
                    f"{clash.id!r} already; each payload type belongs to one class"
                )
            self._classes[cls.id] = cls
            self._by_type[cls.type_name] = cls
        return cls

    def task_class(
        self,
        *,
        id: str,
        prototype: type[Message],
        kind: Kind,
        queue: str = "",
        topic: str = "",
        routing_prefix: str = DEFAULT_ROUTING_PREFIX,
        target_host: str | None = None,
        custom: Callable[[Message], CustomPayload | None] | None = None,
        quiet: bool = False,
        quiet_on_error: bool = False,
        dispatch_deadline_s: float | None = None,
        schedule: Cron | None = None,
        schedule_payload: SchedulePayload | None = None,
        raise_if_exists: bool = False,
    ) -> Callable[[H], H]:
        """Decorator: registers a task class with the decorated handler."""
        cls = self.register_task_class(
            TaskClass(
                id=id, prototype=prototype, kind=kind, queue=queue, topic=topic,
                routing_prefix=routing_prefix, target_host=target_host, custom=custom,
                quiet=quiet, quiet_on_error=quiet_on_error,
                dispatch_deadline_s=dispatch_deadline_s, schedule=schedule,
                schedule_payload=schedule_payload, raise_if_exists=raise_if_exists,
            )
        )  # fmt: skip

        def decorate(handler: H) -> H:
            self.attach_handler(cls.id, handler)
            return handler

        return decorate

    def attach_handler(self, class_id: str, handler: Handler) -> None:
        """Sets the handler of a registered class; a class takes one handler, once."""
        if not callable(handler):
            raise ConfigError(f"task class {class_id!r}: handler must be callable")
        with self._lock:
            cls = self._classes.get(class_id)
            if cls is None:
                raise ConfigError(f"no task class {class_id!r}; register it first")
            if cls.handler is not None:
                raise ConfigError(f"task class {class_id!r} has a handler already")
            cls.handler = handler

    def task_class_by_id(self, class_id: str) -> TaskClass | None:
        return self._classes.get(class_id)

    def task_class_for(self, payload: Message | type[Message]) -> TaskClass | None:
        """The class registered for the payload's protobuf type, if any."""
        return self._by_type.get(payload.DESCRIPTOR.full_name)

    def task_classes(self) -> list[TaskClass]:
        return sorted(self._classes.values(), key=lambda c: c.id)

    def schedules(self) -> list[TaskClass]:
        """The task classes with a cron `schedule`, by ID."""
        return [c for c in self.task_classes() if c.schedule is not None]
