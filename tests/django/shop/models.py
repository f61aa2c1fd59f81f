from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)


class Confirmation(models.Model):
    """One per run of send_confirmation: counts how often the task ran."""

    order_id = models.IntegerField()
    note = models.CharField(max_length=100, default="")
