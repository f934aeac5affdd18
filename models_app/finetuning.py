"""Fine-tune jobs: start one, cancel it, promote or roll back its result (the run itself: finetune_runner.py).

A job's life: queued → running → evaluating → succeeded | failed | cancelled; after evaluation
its `outcome` is `promoted` or `kept_as_candidate` (PRODUCT.md §5). The task is delivered
again if its worker dies (acks_late, reject_on_worker_lost): `_start` lets exactly one delivery
run the job at a time (a fresh heartbeat means another worker has it), counts attempts, and the
training loop resumes from the job's last checkpoint. Progress goes to the row and to the
job's live channel (`/ws/jobs/{id}/`).
"""

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from annotations.exceptions import Conflict, InvalidInput, InvalidTransition, NotFound
from annotations.models import Domain
from annotations.services.audit import audit_record
from collab.events import send_event_on_commit
from webhooks.models import Event
from webhooks.services import event_emit

from . import datasets, services
from .hyperparameters import TrainingSettings
from .models import FineTuneJob, ModelVersion
from .selectors import active_version_for, version_trained_for

logger = logging.getLogger(__name__)


def job_group(job_id: int) -> str:
    return f"job-{job_id}"


def job_state(job: FineTuneJob) -> dict:
    """What the live channel and the API show of a job's progress."""
    return {
        "id": job.pk,
        "status": job.status,
        "outcome": job.outcome,
        "step": job.step,
        "total_steps": job.total_steps,
        "loss": job.loss_history[-1][1] if job.loss_history else None,
        "tokens_per_second": job.tokens_per_second,
        "eta_seconds": job.eta_seconds,
        "candidate": job.candidate.name if job.candidate_id else None,
        "error": job.error,
        "stage": "",  # what a running job does between training steps (finetune_runner: _Reporter.stage)
    }


def announce(job: FineTuneJob) -> None:
    send_event_on_commit(job_group(job.pk), "job.progress", job_state(job))


# --- start and cancel ------------------------------------------------------------


def finetune_job_start(
    *,
    domain: Domain,
    user: AbstractBaseUser | None = None,
    trigger: str = FineTuneJob.Trigger.MANUAL,
    hyperparameters: dict | None = None,
) -> FineTuneJob:
    """Snapshot the domain's examples and queue a run on the `training` queue.

    Conflict when the domain already has an unfinished job (a database constraint settles a race),
    when there is nothing to train on, or when the domain has no active model to start from."""
    base = active_version_for(domain_id=domain.pk)
    if base is None:
        raise InvalidTransition(f"The domain {domain.slug!r} has no active model to fine-tune.")
    if FineTuneJob.objects.filter(domain=domain, status__in=FineTuneJob.UNFINISHED).exists():
        raise Conflict(f"A fine-tune job of {domain.slug!r} is already running.")
    chosen = TrainingSettings.from_dict({**settings.SORA_FINETUNE_DEFAULTS, **(hyperparameters or {})})
    datasets.training_examples_sync(domain=domain)  # outside the transaction below: one item at a time
    try:
        with transaction.atomic():
            snapshot = datasets.snapshot_create(domain=domain, user=user)
            if datasets.snapshot_teaching_count(snapshot=snapshot, split=datasets.TRAIN) == 0:
                raise Conflict(
                    f"The domain {domain.slug!r} has no corrections to train on yet (drafts approved unchanged "
                    "teach nothing new)."
                )
            job = FineTuneJob.objects.create(
                domain=domain,
                run_key=uuid.uuid4(),
                trigger=trigger,
                snapshot=snapshot,
                base_version=base,
                hyperparameters=chosen.as_dict(),
                requested_by=user,
            )
            audit_record(actor=user, verb="finetune.started", target=job, before={}, after={"status": job.status})
            transaction.on_commit(lambda: _dispatch(job.pk))
    except IntegrityError:
        raise Conflict(f"A fine-tune job of {domain.slug!r} is already running.") from None
    return job


def finetune_check(*, domain: Domain) -> FineTuneJob | None:
    """Start a run when the domain's new examples reached its threshold, none is running, and approvals have
    been quiet for SORA_FINETUNE_QUIET_SECONDS: a burst of approvals (an import, a reviewing session) trains
    as one run on all of it, not as a run on whatever had arrived when the threshold was crossed. It also waits
    until SORA_EVAL_MIN_ITEMS of the new examples are held out (datasets.example_split), so that the run's gate
    can decide instead of refusing after the training (a manager may still start a run by hand). Approvals that
    never pause do not hold a run off for ever: once the oldest new example is SORA_FINETUNE_MAX_WAIT_SECONDS
    old, the next check starts it. Each approval schedules a check for the end of its quiet period
    (tasks.finetune_check_soon); beat checks every 5 minutes besides."""
    if FineTuneJob.objects.filter(domain=domain, status__in=FineTuneJob.UNFINISHED).exists():
        return None
    if datasets.new_examples_count(domain=domain) < max(domain.finetune_threshold, 1):
        return None
    if datasets.new_examples_count(domain=domain, split=datasets.HELDOUT) < settings.SORA_EVAL_MIN_ITEMS:
        return None  # the gate could not decide on this round: wait for more held-out corrections
    now = timezone.now()
    last = datasets.last_approval_at(domain=domain)
    oldest = datasets.oldest_new_example_at(domain=domain)
    waited_enough = oldest is not None and now - oldest >= timedelta(seconds=settings.SORA_FINETUNE_MAX_WAIT_SECONDS)
    if last is not None and now - last < timedelta(seconds=settings.SORA_FINETUNE_QUIET_SECONDS) and not waited_enough:
        return None  # still busy: the check scheduled by the latest approval comes after its quiet period
    try:
        return finetune_job_start(domain=domain, trigger=FineTuneJob.Trigger.THRESHOLD)
    except (Conflict, InvalidTransition) as exc:  # a race with a manager's click, or no active model
        logger.info("no automatic fine-tune of %s: %s", domain.slug, exc.message)
        return None


def _dispatch(job_id: int) -> None:
    from .tasks import finetune_task

    try:
        finetune_task.delay(job_id)
    except Exception:  # noqa: BLE001 — the broker is down: the sweep sends it again
        logger.exception("could not queue fine-tune job %s; the sweep will retry", job_id)
        return
    FineTuneJob.objects.filter(pk=job_id, dispatched_at__isnull=True).update(dispatched_at=timezone.now())


@transaction.atomic
def finetune_job_cancel(*, job_id: int, user: AbstractBaseUser | None) -> FineTuneJob:
    job = FineTuneJob.objects.select_for_update().filter(pk=job_id).first()
    if job is None:
        raise NotFound("Fine-tune job not found.")
    if job.status not in FineTuneJob.UNFINISHED:
        raise InvalidTransition(f"The job is {job.status}; there is nothing to cancel.", status=job.status)
    job.cancel_requested_at = timezone.now()
    stale = job.cancel_requested_at - timedelta(seconds=settings.SORA_FINETUNE_STALE_SECONDS)
    if job.status == FineTuneJob.Status.QUEUED and job.attempts == 0:
        job_finish(job, FineTuneJob.Status.CANCELLED, error="Cancelled before it started.")
    elif job.heartbeat_at is None or job.heartbeat_at < stale:
        # No live worker will see the flag: end it here, or the domain could never train again.
        job_finish(job, FineTuneJob.Status.CANCELLED, error="Cancelled (its worker had stopped).")
    else:
        job.save(update_fields=["cancel_requested_at"])  # the running worker stops at its next step
    audit_record(actor=user, verb="finetune.cancel_requested", target=job, before={}, after={"status": job.status})
    return job


def job_finish(job: FineTuneJob, status: str, error: str = "") -> None:
    """End the job (inside the caller's transaction). A candidate of a failed or cancelled run is marked failed."""
    job.status, job.error, job.finished_at = status, error, timezone.now()
    job.save()
    if status != FineTuneJob.Status.SUCCEEDED and job.candidate_id:
        ModelVersion.objects.filter(pk=job.candidate_id, status=ModelVersion.Status.CANDIDATE).update(
            status=ModelVersion.Status.FAILED
        )
    audit_record(actor=None, verb=f"finetune.{status}", target=job, before={}, after={"outcome": job.outcome})
    announce(job)


def finetune_jobs_sweep() -> dict:
    """Send again jobs whose message never reached a worker (broker down, or lost with its broker) and jobs
    whose worker went silent; a job sent again is not sent again before the stale limit passes once more."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.SORA_FINETUNE_STALE_SECONDS)
    never_taken = FineTuneJob.objects.filter(status=FineTuneJob.Status.QUEUED, attempts=0).filter(
        Q(dispatched_at__isnull=True, created_at__lt=now - timedelta(seconds=30)) | Q(dispatched_at__lt=stale)
    )
    silent = FineTuneJob.objects.filter(
        status__in=FineTuneJob.UNFINISHED, attempts__gt=0, heartbeat_at__lt=stale
    ).filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale))
    resent = sorted({*never_taken.values_list("pk", flat=True), *silent.values_list("pk", flat=True)})
    for job_id in resent:
        FineTuneJob.objects.filter(pk=job_id).update(dispatched_at=None)  # _dispatch stamps it when sent
        _dispatch(job_id)
    return {"resent": resent}


# --- promotion and rollback ------------------------------------------------------


@transaction.atomic
def version_promote(*, version: ModelVersion, domain: Domain, user: AbstractBaseUser | None, reason: str = "") -> None:
    """Make `version` the domain's active model: one transaction, audited; new generations use it at once
    in every worker (they read the pointer per draft)."""
    if version.status in (ModelVersion.Status.TRAINING, ModelVersion.Status.FAILED):
        raise InvalidTransition(f"The version {version.name!r} is {version.status}; it cannot serve drafts.")
    promotion_domain_check(version=version, domain=domain)
    services.activate(version=version, domain=domain, user=user)
    audit_record(
        actor=user, verb="model.promoted", target=version, before={}, after={"domain": domain.slug, "reason": reason}
    )
    event_emit(
        event_type=Event.MODEL_PROMOTED, data=lambda: promotion_event_data(version, domain, user, reason), domain=domain
    )


def promotion_event_data(version: ModelVersion, domain: Domain, user: AbstractBaseUser | None, reason: str) -> dict:
    """The `data` of a model.promoted webhook."""
    return {
        "model_version": version.name,
        "parent": version.parent.name if version.parent_id else None,
        "domain": domain.slug,
        "reason": reason,
        "promoted_by": user.get_username() if user is not None and user.is_authenticated else None,
        "promoted_at": timezone.now().isoformat(),
        "evaluation": {k: v for k, v in version.metrics.items() if isinstance(v, (int, float, str))},
    }


def promotion_domain_check(*, version: ModelVersion, domain: Domain) -> None:
    """A version fine-tuned on one domain's examples does not write another domain's drafts (a base model may
    serve any domain)."""
    trained_for = version_trained_for(version=version)
    if trained_for is not None and trained_for.pk != domain.pk:
        raise InvalidInput(
            "domain", f"{version.name!r} was fine-tuned on {trained_for.slug!r}; it cannot serve {domain.slug!r}."
        )


@transaction.atomic
def version_rollback(*, domain: Domain, user: AbstractBaseUser | None) -> ModelVersion:
    """Point the domain back at the parent of its active version."""
    active = active_version_for(domain_id=domain.pk)
    if active is None or active.parent_id is None:
        raise InvalidTransition(f"The domain {domain.slug!r} has no earlier version to roll back to.")
    parent = active.parent
    services.activate(version=parent, domain=domain, user=user)
    audit_record(
        actor=user, verb="model.rolled_back", target=domain, before={"version": active.pk}, after={"version": parent.pk}
    )
    return parent


@transaction.atomic
def version_retire(*, version: ModelVersion, user: AbstractBaseUser | None) -> None:
    """Take a version out of use for good. One that serves a domain must be replaced first."""
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if version.active_for.exists():
        raise InvalidTransition(f"{version.name!r} still writes a domain's drafts; promote another version first.")
    before = {"status": version.status}
    version.status = ModelVersion.Status.RETIRED
    version.save(update_fields=["status"])
    audit_record(actor=user, verb="model.retired", target=version, before=before, after={"status": version.status})
