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
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from collab.events import send_event

from . import datasets, evaluation
from .finetuning import announce, job_finish, job_group, job_state, version_promote
from .general_replay import general_examples
from .hyperparameters import TrainingSettings, steps_for
from .inference.base import Sampling
from .inference.prompts import sampling_from, with_shots
from .models import ActiveModel, FineTuneJob, ModelVersion
from .retrieval import Retriever, Shot, shot_floor, shots_from
from .training import Example, Progress, TrainingCancelled, train

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
# Progress reaches the database and the live channel at most this often (and at the last step).
REPORT_EVERY_SECONDS = 1.0
# Earlier examples the evaluation measures forgetting on.
REPLAY_EVAL_ITEMS = 32


class NotOurs(Exception):
    """Another worker took the job over (this one was presumed dead): stop without touching it."""


def finetune_job_run(job_id: int) -> None:
    job = _start(job_id)
    if job is None:
        return
    heartbeat = _Heartbeat(job)
    heartbeat.start()
    try:
        _train_and_evaluate(job)
    except NotOurs:
        logger.warning("fine-tune job %s was taken over by another worker; this one stops", job_id)
    except TrainingCancelled:
        _end(job, FineTuneJob.Status.CANCELLED, error="Cancelled.")
    except Exception as exc:  # noqa: BLE001 — any failure must end the job with its reason, never leave it running
        logger.exception("fine-tune job %s failed", job_id)
        _end(job, FineTuneJob.Status.FAILED, error=f"{type(exc).__name__}: {exc}")
    finally:
        heartbeat.stop()


def _mine(job: FineTuneJob) -> FineTuneJob:
    """The job, row-locked, if this worker's attempt still owns it; NotOurs otherwise."""
    current = FineTuneJob.objects.select_for_update(of=("self",)).select_related("domain", "candidate").get(pk=job.pk)
    if current.attempts != job.attempts or current.status not in FineTuneJob.UNFINISHED:
        raise NotOurs()
    return current


def _end(job: FineTuneJob, status: str, error: str) -> None:
    try:
        with transaction.atomic():
            job_finish(_mine(job), status, error=error)
    except NotOurs:
        logger.warning("fine-tune job %s was taken over by another worker; not ending it as %s", job.pk, status)


class _Heartbeat:
    """Keeps `heartbeat_at` fresh from a thread, however long a step, a model load or an evaluation takes,
    so the sweep never sends a live job to a second worker."""

    def __init__(self, job: FineTuneJob) -> None:
        self.job_id, self.attempt = job.pk, job.attempts
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"finetune-heartbeat-{job.pk}", daemon=True)

    def start(self) -> None:
        # Inside a transaction (a task run inline by a test) another connection could not see the job.
        if not connection.in_atomic_block:
            self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def _run(self) -> None:
        interval = max(1.0, settings.SORA_FINETUNE_STALE_SECONDS / 5)
        try:
            while not self.stopped.wait(interval):
                FineTuneJob.objects.filter(pk=self.job_id, attempts=self.attempt).update(heartbeat_at=timezone.now())
        finally:
            connection.close()  # this thread's own database connection


@transaction.atomic
def _start(job_id: int) -> FineTuneJob | None:
    """Take the job for this worker, or None: finished, cancelled, or alive in another worker."""
    job = (
        FineTuneJob.objects.select_for_update(of=("self",))
        .select_related("domain", "base_version", "snapshot")
        .get(pk=job_id)
    )
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
    job.status = job.status if job.status == FineTuneJob.Status.EVALUATING else FineTuneJob.Status.RUNNING
    job.heartbeat_at = now
    job.started_at = job.started_at or now
    job.save(update_fields=["attempts", "status", "heartbeat_at", "started_at"])
    announce(job)
    return job


def work_dir(job: FineTuneJob) -> Path:
    return Path(settings.SORA_ADAPTERS_DIR) / job.domain.slug / str(job.run_key)


@dataclass
class RunData:
    """What a run trains on, what the gate measures forgetting on, and how each was made up (for the report)."""

    train: list[Example]
    forgetting: list[Example]
    counts: dict


def training_examples(job: FineTuneJob) -> RunData:
    """The snapshot's new training examples that teach something (weight > 0; all teaching examples when none
    are new: a manager's re-run), a share of them with retrieved examples in the prompt as drafts are served,
    plus replay of ceil(new × replay_ratio): earlier examples and the model's drafts approved unchanged, and
    where those run short the base model's own answers to general prompts, so the first round has replay
    too. Forgetting is measured on earlier examples this run did not see again and on general prompts no
    run trains on."""
    chosen = TrainingSettings.from_dict(job.hyperparameters)
    train_split = datasets.snapshot_examples(snapshot=job.snapshot, split=datasets.TRAIN)
    new_ids = datasets.snapshot_new_ids(snapshot=job.snapshot)
    teaching = [e for e in train_split if e.weight > 0]
    new = [e for e in teaching if e.pk in new_ids] or teaching
    taken = {e.pk for e in new}
    earlier = [e for e in train_split if e.pk not in new_ids and e.pk not in taken]
    accepted = [e for e in train_split if e.pk in new_ids and e.weight == 0]
    wanted = math.ceil(len(new) * chosen.replay_ratio)
    rng = random.Random(chosen.seed)
    replayed = rng.sample(earlier + accepted, min(wanted, len(earlier) + len(accepted)))
    reporter = _Reporter(job)

    def after_each_answer(done: int, total: int) -> None:
        reporter.stage(f"writing the base model's answers to general prompts (once): {done} of {total}")

    general_replay, general_forgetting = general_examples(job.base_version.base_model, on_item=after_each_answer)
    general = general_replay[: max(0, wanted - len(replayed))]
    unseen = [e for e in earlier if e not in replayed][:REPLAY_EVAL_ITEMS]
    retriever = Retriever(shots_from(teaching))
    k = job.domain.retrieval_examples
    with_examples = []
    for example in new:
        messages = example.messages
        if k and rng.random() < chosen.retrieval_share:
            # The nearest examples, as drafts are served. Not unmatched ones: an adapter trained with them learned
            # to answer from the request alone and, served a near example, answered another kind of request
            # (bench/learning.py, tuning style 3: worse with the nearest examples, 0.076 against 0.017).
            shots = retriever.top(messages, k, exclude=frozenset({example.pk}))
            messages = with_shots(messages, [(shot.messages, shot.completion) for shot in shots])
        with_examples.append(Example(messages, example.completion, example.weight))
    return RunData(
        train=with_examples + [Example(e.messages, e.completion, 1.0) for e in replayed] + general,
        forgetting=_examples(unseen) + general_forgetting,
        counts={
            "new": len(new),
            "replay_earlier": sum(1 for e in replayed if e.pk not in new_ids),
            "replay_accepted": sum(1 for e in replayed if e.pk in new_ids),
            "replay_general": len(general),
            "forgetting_earlier": len(unseen),
            "forgetting_general": len(general_forgetting),
        },
    )


def _examples(rows) -> list[Example]:
    return [Example(row.messages, row.completion, row.weight) for row in rows]


def _train_and_evaluate(job: FineTuneJob) -> None:
    chosen = TrainingSettings.from_dict(job.hyperparameters)
    data = training_examples(job)
    if job.candidate_id is None or not Path(job.candidate.adapter_path).is_dir():
        _train(job, data.train, chosen)  # a worker lost during evaluation left a candidate: evaluate it again
    job = FineTuneJob.objects.select_related("domain", "base_version", "snapshot", "candidate").get(pk=job.pk)
    report, promote = _evaluate(job, data)
    with transaction.atomic():
        current = _mine(job)
        candidate = current.candidate
        candidate.metrics = {**candidate.metrics, **report.get("candidate", {})}
        candidate.save(update_fields=["metrics"])
        current.evaluation = report
        current.outcome = FineTuneJob.Outcome.KEPT_AS_CANDIDATE
        if promote:
            still = _promotion_blocker(current)
            if still:
                report["reasons"].append(still)
            else:
                version_promote(version=candidate, domain=current.domain, user=None, reason=f"fine-tune job {job.pk}")
                current.outcome = FineTuneJob.Outcome.PROMOTED
        job_finish(current, FineTuneJob.Status.SUCCEEDED)
    shutil.rmtree(work_dir(job) / "checkpoint", ignore_errors=True)


def _train(job: FineTuneJob, to_train: list[Example], chosen: TrainingSettings) -> None:
    FineTuneJob.objects.filter(pk=job.pk, attempts=job.attempts).update(total_steps=steps_for(len(to_train), chosen))
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
        current = _mine(job)
        current.candidate, _ = ModelVersion.objects.update_or_create(
            name=f"{current.domain.slug}-ft{current.pk}",
            defaults={
                "base_model": job.base_version.base_model,
                "adapter_path": str(result.adapter_path),
                "parent": job.base_version,
                "status": ModelVersion.Status.CANDIDATE,
                "metrics": {"final_loss": result.loss_history[-1][1], "snapshot": job.snapshot.sha256},
                "created_by": job.requested_by,
            },
        )
        current.status, current.device = FineTuneJob.Status.EVALUATING, result.device
        current.loss_history, current.step = result.loss_history, result.steps
        current.tokens_per_second, current.eta_seconds = result.tokens_per_second, 0.0
        current.save()
        announce(current)


def _promotion_blocker(job: FineTuneJob) -> str:
    """Why an automatic promotion must not happen now, or "": the candidate was compared with the version
    the run started from, so it may only replace that one (a manager may have rolled back or promoted
    meanwhile), and only while nobody retired it or cancelled the job."""
    if job.cancel_requested_at:
        return "cancelled during evaluation: not promoted"
    if job.candidate.status != ModelVersion.Status.CANDIDATE:
        return f"the candidate is {job.candidate.status} now: not promoted"
    active = ActiveModel.objects.select_for_update().filter(domain=job.domain).first()
    if active is None or active.version_id != job.base_version_id:
        return "the domain's active version changed during the run: not promoted over it"
    return ""


@dataclass(frozen=True)
class GateItem:
    """A held-out item with the examples it may be prompted with: `nearest`, those retrieval finds for it, as a
    draft of it is served; `drawn`, examples that are not like it. Each pairs a shot with its nearness."""

    example: Example
    nearest: list[tuple[Shot, float]]
    drawn: list[tuple[Shot, float]]

    def prompted(self, shots: list[tuple[Shot, float]], floor: float) -> Example:
        pairs = [(shot.messages, shot.completion) for shot, nearness in shots if nearness >= floor]
        return Example(with_shots(self.example.messages, pairs), self.example.completion, 1.0)


@dataclass(frozen=True)
class DecisionSet:
    """The held-out items the gate decides on, each prompted two ways, and for each version with the examples
    that version would be shown when served (retrieval.shot_floor): `served` with its nearest examples,
    `unmatched` with examples that are not like it."""

    items: list[GateItem]

    def served(self, floor: float = 0.0) -> list[Example]:
        return [item.prompted(item.nearest, floor) for item in self.items]

    def unmatched(self, floor: float = 0.0) -> list[Example]:
        return [item.prompted(item.drawn, floor) for item in self.items]


def decision_set(job: FineTuneJob) -> DecisionSet:
    """The held-out items the gate decides on: those of this round (new since the last finished run) that
    teach something, so that a new house style is judged on itself and not averaged with earlier data (which
    the forgetting check covers); all teaching held-out items when the snapshot holds nothing new (a manager's
    re-run). The newest SORA_EVAL_MAX_ITEMS, each with examples from the snapshot's training split:

    - nearest: the k that retrieval finds, as a draft of it would be served;
    - drawn: k drawn at random (seeded by the item) from outside its nearest (Retriever.unmatched). A
      held-out item of this round has near-copies among this round's corrections, and with them in the
      prompt both versions copy the answer (the base model scored 0.017 on such items of bench/learning.py's
      style 3, leaving a fine-tune nothing to win); a new kind of request has none. Prompts with these show
      what a version writes then: a base version with examples of the house style that do not answer the
      question, a fine-tuned one with those few of them near enough to be served to it (evaluation.decide)."""
    heldout = datasets.snapshot_examples(snapshot=job.snapshot, split=datasets.HELDOUT)
    new_ids = datasets.snapshot_new_ids(snapshot=job.snapshot)
    teaching = [e for e in heldout if e.weight > 0]
    # A round with too few new held-out items is refused by the caller, not judged on earlier data.
    this_round = [e for e in teaching if e.pk in new_ids] if new_ids else teaching
    chosen = this_round[-settings.SORA_EVAL_MAX_ITEMS :]
    pool = shots_from(
        e for e in datasets.snapshot_examples(snapshot=job.snapshot, split=datasets.TRAIN) if e.weight > 0
    )
    retriever, k = Retriever(pool), job.domain.retrieval_examples
    items = []
    for e in chosen:
        nearest, drawn = retriever.top(e.messages, k), retriever.unmatched(e.messages, k, seed=f"sora-gate:{e.pk}")
        items.append(
            GateItem(
                Example(e.messages, e.completion, 1.0),
                list(zip(nearest, retriever.nearness(e.messages, nearest), strict=True)),
                list(zip(drawn, retriever.nearness(e.messages, drawn), strict=True)),
            )
        )
    return DecisionSet(items)


def _evaluate(job: FineTuneJob, data: RunData) -> tuple[dict, bool]:
    chosen = decision_set(job)
    items = len(chosen.items)
    domain_sampling = sampling_from(job.domain.sampling)
    # Greedy, whatever the domain samples with: the comparison must not depend on chance.
    sampling = Sampling(
        max_new_tokens=domain_sampling.max_new_tokens,
        repetition_penalty=domain_sampling.repetition_penalty,
        no_repeat_ngram_size=domain_sampling.no_repeat_ngram_size,
    )
    report = {
        "heldout_items": items,
        "min_items": settings.SORA_EVAL_MIN_ITEMS,
        "retrieval_examples": job.domain.retrieval_examples,
        "replay_items": data.counts["replay_earlier"] + data.counts["replay_accepted"] + data.counts["replay_general"],
        "data": data.counts,
        "margin": settings.SORA_PROMOTION_MARGIN,
        "replay_tolerance": settings.SORA_REPLAY_TOLERANCE,
    }
    if items < settings.SORA_EVAL_MIN_ITEMS:
        reason = (
            f"only {items} held-out items of this round; at least {settings.SORA_EVAL_MIN_ITEMS} are needed "
            "to decide, so the candidate is kept (a manager may still promote it)"
        )
        return {**report, "decided": False, "promote": False, "reasons": [reason]}, False
    reporter = _Reporter(job)

    def between_items(side: str):
        done = 0

        def after_each() -> None:
            nonlocal done
            done += 1
            reporter.stage(f"evaluating: the {side}'s draft {done} of {2 * items}")
            if reporter.cancel_requested():
                raise TrainingCancelled()

        return after_each

    scores, floors = {}, {}
    for side, version in (("active", job.base_version), ("candidate", job.candidate)):
        after_each = between_items("active version" if side == "active" else "candidate")
        ref, floor = version.model_ref(), shot_floor(version)  # each is shown the examples it would be served
        floors[side] = floor
        scores[side] = (
            evaluation.score(ref, chosen.unmatched(floor), data.forgetting, sampling, on_item=after_each),
            evaluation.score(ref, chosen.served(floor), [], sampling, on_item=after_each),
        )
    (active, served_active), (candidate, served_candidate) = scores["active"], scores["candidate"]
    promote, reasons = evaluation.decide(
        active,
        candidate,
        served_active=served_active,
        served_candidate=served_candidate,
        margin=settings.SORA_PROMOTION_MARGIN,
        replay_tolerance=settings.SORA_REPLAY_TOLERANCE,
    )
    report.update(
        decided=True,
        active={"version": job.base_version.name, **active.as_dict(), **served_active.as_dict(prefix="served_")},
        candidate={"version": job.candidate.name, **candidate.as_dict(), **served_candidate.as_dict(prefix="served_")},
        confidence=evaluation.paired_gain(active, candidate).as_dict(),
        retrieval_floor=floors,
        promote=promote,
        reasons=reasons,
        samples=[
            {"approved": item.example.completion, "active": a, "candidate": c}
            for item, a, c in list(zip(chosen.items, active.drafts, candidate.drafts, strict=True))[:3]
        ],
    )
    return report, promote


class _Reporter:
    """Progress to the row and the live channel (throttled), and the cancel flag back."""

    def __init__(self, job: FineTuneJob) -> None:
        self.job_id, self.attempt = job.pk, job.attempts
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
        if job.attempts != self.attempt:
            raise NotOurs()
        # A resumed run reports from its checkpoint on: keep the steps the first attempt stored.
        stored = [entry for entry in job.loss_history if entry[0] < (self.history[0][0] if self.history else 0)]
        job.loss_history = stored + self.history
        job.step, job.total_steps = progress.step, progress.total_steps
        job.tokens_per_second, job.eta_seconds = progress.tokens_per_second, progress.eta_seconds
        job.heartbeat_at = timezone.now()
        FineTuneJob.objects.filter(pk=self.job_id, attempts=self.attempt).update(
            loss_history=job.loss_history,
            step=job.step,
            total_steps=job.total_steps,
            tokens_per_second=job.tokens_per_second,
            eta_seconds=job.eta_seconds,
            heartbeat_at=job.heartbeat_at,
        )
        send_event(job_group(job.pk), "job.progress", job_state(job))

    def stage(self, text: str) -> None:
        """What the job is doing between training steps (general answers, evaluation), to the live channel only,
        at most once a second: a page opened meanwhile shows the row's status until the next one."""
        now = time.monotonic()
        if now - self.last_report < REPORT_EVERY_SECONDS:
            return
        self.last_report = now
        send_event(
            job_group(self.job_id),
            "job.progress",
            {**job_state(FineTuneJob.objects.get(pk=self.job_id)), "stage": text},
        )

    def cancel_requested(self) -> bool:
        now = time.monotonic()
        if not self.cancelled and now - self.last_cancel_check >= REPORT_EVERY_SECONDS:
            self.last_cancel_check = now
            self.cancelled = FineTuneJob.objects.filter(pk=self.job_id, cancel_requested_at__isnull=False).exists()
        return self.cancelled
