"""The benchmark's business rows: an order, and the extra row saved by hand."""

from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)
    quantity = models.IntegerField()

    class Meta:
        app_label = "django_app"


class OutboxRow(models.Model):
    """A task written by hand in the order's transaction: what enqueue is compared with."""

    task_path = models.CharField(max_length=200)
    args_json = models.TextField()
    queue_name = models.CharField(max_length=100)
    created_at = models.DateTimeField()

    class Meta:
        app_label = "django_app"
