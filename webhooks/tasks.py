"""Celery tasks: thin wrappers over webhooks.services (queue `webhooks`)."""

from celery import shared_task

from . import services


@shared_task(name="webhooks.deliver", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deliver_task(delivery_id: int) -> None:
    services.delivery_send(delivery_id=delivery_id)


@shared_task(name="webhooks.deliveries_sweep", ignore_result=True)
def deliveries_sweep_task() -> dict:
    return services.deliveries_sweep()
