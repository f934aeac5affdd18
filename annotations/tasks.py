from celery import shared_task

from . import services


@shared_task(name="annotations.leases_expire")
def leases_expire_task() -> int:
    """Return items whose reviewers went quiet to the queue, so lists show them as ready."""
    return services.leases_expire()


@shared_task(name="annotations.generate_draft", acks_late=True, reject_on_worker_lost=True)
def generate_draft(generation_id: int) -> None:
    """Write a draft with the domain's active model (inference queue). A lost worker's delivery is retried."""
    from .services.generation import generation_run

    generation_run(generation_id)


@shared_task(name="annotations.generations_sweep")
def generations_sweep_task() -> dict:
    """Queue again what the broker never took; fail drafts whose worker died."""
    from .services.generation import generations_sweep

    return generations_sweep()
