"""The results of django.tasks tasks run through tq (`TaskResult`, stored).

One row per enqueued task, written in the enqueueing transaction (READY)
and updated by each attempt (RUNNING, then SUCCESSFUL or FAILED). tq's
own tables (reminders, leases, the database queue) are not models: the
migrations create them with tq's DDL (see migrations/0001_initial.py).
JSON columns are text holding JSON, written as `json.dumps` writes it.
"""

from __future__ import annotations

from django.db import models


class TaskResultRecord(models.Model):
    """The stored state of one `django.tasks.TaskResult` (see `TqBackend.get_result`)."""

    id = models.CharField(max_length=64, primary_key=True)
    task_path = models.TextField()
    backend = models.CharField(max_length=100)
    queue_name = models.CharField(max_length=100)
    priority = models.IntegerField(default=0)
    status = models.CharField(max_length=10)
    args_json = models.TextField(default="[]")
    kwargs_json = models.TextField(default="{}")
    run_after = models.DateTimeField(null=True)
    enqueued_at = models.DateTimeField(null=True)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    last_attempted_at = models.DateTimeField(null=True)
    return_value_json = models.TextField(null=True)
    errors_json = models.TextField(default="[]")
    worker_ids_json = models.TextField(default="[]")

    class Meta:
        db_table = "tq_django_task_results"
        app_label = "tq"
        indexes = (
            # For pruning finished results; enqueues (not finished) do not touch it.
            models.Index(
                fields=["finished_at"],
                name="tq_results_finished",
                condition=models.Q(finished_at__isnull=False),
            ),
        )

    def __str__(self) -> str:
        return f"{self.task_path} {self.id} {self.status}"
