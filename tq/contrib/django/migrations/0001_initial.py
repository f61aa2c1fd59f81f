"""tq's tables (outbox and database queue, tq's own DDL) and the task results."""

from django.db import migrations, models

from tq.contrib.django._schema import create_tables


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.RunPython(create_tables, migrations.RunPython.noop, elidable=False),
        migrations.CreateModel(
            name="TaskResultRecord",
            fields=[
                ("id", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("task_path", models.TextField()),
                ("backend", models.CharField(max_length=100)),
                ("queue_name", models.CharField(max_length=100)),
                ("priority", models.IntegerField(default=0)),
                ("status", models.CharField(max_length=10)),
                ("args_json", models.TextField(default="[]")),
                ("kwargs_json", models.TextField(default="{}")),
                ("run_after", models.DateTimeField(null=True)),
                ("enqueued_at", models.DateTimeField(null=True)),
                ("started_at", models.DateTimeField(null=True)),
                ("finished_at", models.DateTimeField(null=True)),
                ("last_attempted_at", models.DateTimeField(null=True)),
                ("return_value_json", models.TextField(null=True)),
                ("errors_json", models.TextField(default="[]")),
                ("worker_ids_json", models.TextField(default="[]")),
            ],
            options={
                "db_table": "tq_django_task_results",
                "indexes": [
                    models.Index(
                        condition=models.Q(("finished_at__isnull", False)),
                        fields=["finished_at"],
                        name="tq_results_finished",
                    )
                ],
            },
        ),
    ]
