from celery import shared_task

from . import services


@shared_task(name="annotations.leases_expire")
def leases_expire_task() -> int:
    """Return items whose reviewers went quiet to the queue, so lists show them as ready."""
    return services.leases_expire()
