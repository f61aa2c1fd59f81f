from django.tasks import task


@task
def confirm(order_id: int) -> None:
    """Never run by the benchmark: only enqueued."""
