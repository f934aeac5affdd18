"""The body of a fine-tune job, run by the `models_app.finetune` task on a training worker.

Kept apart from finetuning.py because it imports torch: the web process never loads it.
`_start` lets exactly one delivery of the task run the job at a time (a fresh heartbeat means
another worker has it) and counts attempts; the training loop resumes from the job's last
checkpoint (training.py).
"""

import logging
import math
import random
import shutil
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from collab.events import send_event

from . import datasets, evaluation
from .finetuning import announce, job_finish, job_group, job_state, version_promote
from .hyperparameters import TrainingSettings, steps_for
from .inference.base import Sampling
from .inference.prompts import sampling_from
from .models import FineTuneJob, ModelVersion
from .training import Example, Progress, TrainingCancelled, train

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
# Progress reaches the database and the live channel at most this often (and at the last step).
REPORT_EVERY_SECONDS = 1.0


def finetune_job_run(job_id: int) -> None:
    job = _start(job_id)
    if job is None:
        return
    try:
        _train_and_evaluate(job)
    except TrainingCancelled:
        with transaction.atomic():
            job_finish(_locked(job.pk), FineTuneJob.Status.CANCELLED, error="Cancelled.")
    except Exception as exc:  # noqa: BLE001 — any failure must end the job with its reason, never leave it running
        logger.exception("fine-tune job %s failed", job_id)
        with transaction.atomic():
            job_finish(_locked(job.pk), FineTuneJob.Status.FAILED, error=f"{type(exc).__name__}: {exc}")


def _locked(job_id: int) -> FineTuneJob:
    return FineTuneJob.objects.select_for_update().get(pk=job_id)


@transaction.atomic
def _start(job_id: int) -> FineTuneJob | None:
    """Take the job for this worker, or None: finished, cancelled, or alive in another worker."""
    job = FineTuneJob.objects.select_for_update().select_related("domain", "base_version", "snapshot").get(pk=job_id)
    if job.status not in FineTuneJob.UNFINISHED:
        return None
    now = timezone.now()
    stale = now - timedelta(seconds=settings.SORA_FINETUNE_STALE_SECONDS)
    if job.status != FineTuneJob.Status.QUEUED and job.heartbeat_at and job.heartbeat_at > stale:
        logger.info("fine-tune job %s is alive in another worker; not starting it twice", job_id)
        return None
    if job.cancel_requested_at:
        job_finish(job, FineTuneJob.Status.CANCELLED, error="Cancelled before it started.")
        return None
    if job.attempts >= MAX_ATTEMPTS:
        job_finish(job, FineTuneJob.Status.FAILED, error=f"Its worker was lost {job.attempts} times.")
        return None
    job.attempts += 1
    job.status, job.heartbeat_at = FineTuneJob.Status.RUNNING, now
    job.started_at = job.started_at or now
    job.save(update_fields=["attempts", "status", "heartbeat_at", "started_at"])
    announce(job)
    return job


def work_dir(job: FineTuneJob) -> Path:
    return Path(settings.SORA_ADAPTERS_DIR) / job.domain.slug / str(job.run_key)


def training_examples(job: FineTuneJob) -> tuple[list[Example], list[Example]]:
    """(what to train on, what to replay in evaluation): the snapshot's new training examples plus a
    replay sample of earlier ones; all training examples when none are new (a manual re-run)."""
    settings_ = TrainingSettings.from_dict(job.hyperparameters)
    train_split = datasets.snapshot_examples(snapshot=job.snapshot, split=datasets.TRAIN)
    new_ids = datasets.snapshot_new_ids(snapshot=job.snapshot)
    new = [e for e in train_split if e.pk in new_ids] or train_split
    earlier = [e for e in train_split if e.pk not in new_ids]
    replay = sample_replay(_examples(earlier), math.ceil(len(new) * settings_.replay_ratio), settings_.seed)
    return _examples(new) + replay, replay


def _examples(rows) -> list[Example]:
    return [Example(row.messages, row.completion, row.weight) for row in rows]


def _train_and_evaluate(job: FineTuneJob) -> None:
    chosen = TrainingSettings.from_dict(job.hyperparameters)
    to_train, replay = training_examples(job)
    FineTuneJob.objects.filter(pk=job.pk).update(total_steps=steps_for(len(to_train), chosen))
    reporter = _Reporter(job)
    result = train(
        base_model=job.base_version.base_model,
        parent_adapter=job.base_version.adapter_path,
        examples=to_train,
        settings=chosen,
        work_dir=work_dir(job),
        on_progress=reporter.report,
        should_stop=reporter.cancel_requested,
    )
    with transaction.atomic():
        job = _locked(job.pk)
        job.candidate = ModelVersion.objects.create(
            name=f"{job.domain.slug}-ft{job.pk}",
            base_model=job.base_version.base_model,
            adapter_path=str(result.adapter_path),
            parent=job.base_version,
            status=ModelVersion.Status.CANDIDATE,
            metrics={"final_loss": result.loss_history[-1][1], "snapshot": job.snapshot.sha256},
            created_by=job.requested_by,
        )
        job.status, job.device = FineTuneJob.Status.EVALUATING, result.device
        job.loss_history, job.step, job.tokens_per_second = result.loss_history, result.steps, result.tokens_per_second
        job.eta_seconds, job.heartbeat_at = 0.0, timezone.now()
        job.save()
        announce(job)
    report, promote = _evaluate(job, replay)
    with transaction.atomic():
        job = _locked(job.pk)
        candidate = job.candidate
        candidate.metrics = {**candidate.metrics, **report["candidate"]}
        candidate.save(update_fields=["metrics"])
        job.evaluation = report
        if promote and not job.cancel_requested_at:
            version_promote(version=candidate, domain=job.domain, user=None, reason=f"fine-tune job {job.pk}")
            job.outcome = FineTuneJob.Outcome.PROMOTED
        else:
            job.outcome = FineTuneJob.Outcome.KEPT_AS_CANDIDATE
        job_finish(job, FineTuneJob.Status.SUCCEEDED)
    shutil.rmtree(work_dir(job) / "checkpoint", ignore_errors=True)


def _evaluate(job: FineTuneJob, replay: list[Example]) -> tuple[dict, bool]:
    heldout = _examples(datasets.snapshot_examples(snapshot=job.snapshot, split=datasets.HELDOUT))
    heldout = heldout[: settings.SORA_EVAL_MAX_ITEMS]
    domain_sampling = sampling_from(job.domain.sampling)
    # Greedy, whatever the domain samples with: the comparison must not depend on chance.
    sampling = Sampling(
        max_new_tokens=domain_sampling.max_new_tokens, repetition_penalty=domain_sampling.repetition_penalty
    )
    heartbeat = _Reporter(job).beat
    active = evaluation.score(job.base_version.model_ref(), heldout, replay, sampling, on_item=heartbeat)
    candidate = evaluation.score(job.candidate.model_ref(), heldout, replay, sampling, on_item=heartbeat)
    promote, reasons = evaluation.decide(
        active, candidate, margin=settings.SORA_PROMOTION_MARGIN, replay_tolerance=settings.SORA_REPLAY_TOLERANCE
    )
    report = {
        "heldout_items": len(heldout),
        "replay_items": len(replay),
        "active": {"version": job.base_version.name, **active.as_dict()},
        "candidate": {"version": job.candidate.name, **candidate.as_dict()},
        "margin": settings.SORA_PROMOTION_MARGIN,
        "replay_tolerance": settings.SORA_REPLAY_TOLERANCE,
        "promote": promote,
        "reasons": reasons,
        "samples": [
            {"approved": e.completion, "active": a, "candidate": c}
            for e, a, c in list(zip(heldout, active.drafts, candidate.drafts, strict=True))[:3]
        ],
    }
    if not heldout:
        report["reasons"].append("no held-out items: nothing to compare on, so the candidate is kept")
        promote = False
    return report, promote


class _Reporter:
    """Progress to the row and the live channel (throttled), and the cancel flag back."""

    def __init__(self, job: FineTuneJob) -> None:
        self.job_id = job.pk
        self.last_report = 0.0
        self.last_cancel_check = 0.0
        self.cancelled = False
        self.history: list[list[float]] = []

    def report(self, progress: Progress) -> None:
        self.history.append([progress.step, round(progress.loss, 5)])
        now = time.monotonic()
        if now - self.last_report < REPORT_EVERY_SECONDS and progress.step < progress.total_steps:
            return
        self.last_report = now
        job = FineTuneJob.objects.get(pk=self.job_id)
        # A resumed run reports from its checkpoint on: keep the steps the first attempt stored.
        stored = [entry for entry in job.loss_history if entry[0] < (self.history[0][0] if self.history else 0)]
        job.loss_history = stored + self.history
        job.step, job.total_steps = progress.step, progress.total_steps
        job.tokens_per_second, job.eta_seconds = progress.tokens_per_second, progress.eta_seconds
        job.heartbeat_at = timezone.now()
        job.save(
            update_fields=["loss_history", "step", "total_steps", "tokens_per_second", "eta_seconds", "heartbeat_at"]
        )
        send_event(job_group(job.pk), "job.progress", job_state(job))

    def beat(self) -> None:
        FineTuneJob.objects.filter(pk=self.job_id).update(heartbeat_at=timezone.now())

    def cancel_requested(self) -> bool:
        now = time.monotonic()
        if not self.cancelled and now - self.last_cancel_check >= REPORT_EVERY_SECONDS:
            self.last_cancel_check = now
            self.cancelled = FineTuneJob.objects.filter(pk=self.job_id, cancel_requested_at__isnull=False).exists()
        return self.cancelled


def sample_replay(examples: list[Example], count: int, seed: int) -> list[Example]:
    if len(examples) <= count:
        return list(examples)
    return random.Random(seed).sample(examples, count)
