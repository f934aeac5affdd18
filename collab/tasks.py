from celery import shared_task

from . import services


@shared_task(name="collab.viewers_prune")
def viewers_prune_task() -> int:
    """Forget viewers whose server died without saying goodbye (their rows outlive the socket)."""
    return services.viewers_prune()
