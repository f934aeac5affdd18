import logging

from celery import shared_task
from django.conf import settings

logger = logging.getLogger(__name__)


def finetune_check_soon(domain_id: int) -> None:
    """After an approval commits: check the domain's threshold in a worker, off the reviewer's request, once
    the approvals have been quiet for SORA_FINETUNE_QUIET_SECONDS (finetuning.finetune_check)."""
    if not settings.SORA_FINETUNE_AUTO:
        return
    try:
        # A second past the quiet period, so the check finds it over even with a little clock skew.
        finetune_check_task.apply_async((domain_id,), countdown=settings.SORA_FINETUNE_QUIET_SECONDS + 1)
    except Exception:  # noqa: BLE001 — the broker is down: the periodic check catches up
        logger.exception("could not queue the fine-tune check of domain %s", domain_id)


@shared_task(name="models_app.finetune", acks_late=True, reject_on_worker_lost=True)
def finetune_task(job_id: int) -> None:
    """Run a fine-tune job (training queue). A lost worker's delivery comes back and resumes from the checkpoint."""
    from .finetune_runner import finetune_job_run

    finetune_job_run(job_id)


@shared_task(name="models_app.finetune_check")
def finetune_check_task(domain_id: int | None = None) -> list[int]:
    """Start runs for domains whose new examples reached their threshold (one domain, or all)."""
    from annotations.models import Domain

    from .finetuning import finetune_check

    domains = Domain.objects.filter(is_active=True)
    if domain_id is not None:
        domains = domains.filter(pk=domain_id)
    return [job.pk for domain in domains if (job := finetune_check(domain=domain)) is not None]


@shared_task(name="models_app.finetune_sweep")
def finetune_sweep_task() -> dict:
    """Send again jobs the broker never took or whose worker went silent."""
    from .finetuning import finetune_jobs_sweep

    return finetune_jobs_sweep()
