"""The loop closes: approvals → examples → snapshot → a fine-tune job → evaluation → promotion → new drafts.

Celery runs tasks inline in tests; the tiny model learns a fixed sign-off within a few steps,
so a candidate trained on it really writes closer to the approved texts than its parent.
"""

import json

import pytest
from django.utils import timezone

from annotations import services
from annotations.exceptions import Conflict, InvalidTransition
from annotations.models import Generation
from models_app import datasets, finetune_runner, finetuning
from models_app.finetuning import finetune_job_cancel, finetune_job_start, finetune_jobs_sweep, version_rollback
from models_app.models import DatasetSnapshot, FineTuneJob, ModelVersion, TrainingExample
from models_app.selectors import active_version_for
from tests.factories import ItemFactory
from tests.models_app.rounds import FLOOR, LEARN, REPLAY_TOLERANCE, SIGN_OFF, approve_round


@pytest.fixture(autouse=True)
def adapters_in_tmp(settings, tmp_path):
    settings.SORA_ADAPTERS_DIR = tmp_path / "adapters"


@pytest.fixture
def short_domain(domain, settings):
    settings.SORA_HELDOUT_PERCENT = 30
    settings.SORA_EVAL_MIN_ITEMS = 3  # a handful of held-out items decides here: the tiny model learns fast
    settings.SORA_REPLAY_TOLERANCE = REPLAY_TOLERANCE
    settings.SORA_RETRIEVAL_FINETUNED_FLOOR = FLOOR  # rounds.FLOOR says why
    settings.SORA_FINETUNE_QUIET_SECONDS = 0
    domain.sampling = {"max_new_tokens": 12}
    domain.save()
    return domain


def approve(reviewer, domain, count: int, final_text: str = SIGN_OFF) -> None:
    for n in range(count):
        ItemFactory(domain=domain, input=f"Customer message {n}: where is my parcel?", draft=f"Draft {n}.")
        claimed = services.item_claim_next(reviewer=reviewer)
        services.review_submit(
            item_id=claimed.pk, reviewer=reviewer, decision="approve", version=claimed.version, final_text=final_text
        )


def run_job(django_capture_on_commit_callbacks, **kwargs) -> FineTuneJob:
    with django_capture_on_commit_callbacks(execute=True):
        job = finetune_job_start(**kwargs)
    job.refresh_from_db()
    return job


# --- training data ----------------------------------------------------------------


def test_every_approved_item_becomes_one_example_with_its_prompt_and_text(reviewer, short_domain, tiny_model):
    approve(reviewer, short_domain, 3)

    examples = list(TrainingExample.objects.filter(domain=short_domain).select_related("item"))

    assert len(examples) == 3
    assert all(e.completion == SIGN_OFF and (e.origin, e.weight) == ("corrected", 2.0) for e in examples)
    assert examples[0].messages[-1] == {"role": "user", "content": f"Answer: {examples[0].item.input}"}


def test_a_medical_note_reaches_the_training_set_only_redacted(reviewer, second_reviewer, medical_note):
    medical_note.reviewers.add(reviewer, second_reviewer)
    metadata = {"patient_name": "Aurelio Fanshawe", "dob": "1984-03-12", "mrn": "MRN-448201"}
    ItemFactory(
        domain=medical_note,
        input="Patient: Aurelio Fanshawe, twelfth of March, 1984. MRN-448201. Cough for ten days.",
        metadata=metadata,
        draft="Aurelio Fanshawe (DOB 12/03/1984) has a cough.",
    )
    for who in (reviewer, second_reviewer):  # medical notes need two approvals
        claimed = services.item_claim_next(reviewer=who, domain=medical_note.slug)
        services.review_submit(item_id=claimed.pk, reviewer=who, decision="approve", version=claimed.version)

    example = TrainingExample.objects.get(domain=medical_note)
    stored = json.dumps(example.messages) + example.completion
    for secret in ("Aurelio", "Fanshawe", "1984", "448201"):
        assert secret not in stored
    assert example.redacted and "[NAME]" in example.completion and "cough" in example.completion


def test_a_snapshot_freezes_the_examples_with_a_stable_split_and_exports_chat_jsonl(reviewer, short_domain):
    approve(reviewer, short_domain, 10)
    first = datasets.snapshot_create(domain=short_domain)
    approve(reviewer, short_domain, 4)

    second = datasets.snapshot_create(domain=short_domain)

    assert (first.train_count + first.heldout_count, first.new_count) == (10, 10)
    # No run has finished: every example is still new (a snapshot alone trains nothing).
    assert (second.train_count + second.heldout_count, second.new_count) == (14, 14)
    assert second.manifest[:10] == first.manifest  # same examples, same sides
    assert len({first.sha256, second.sha256}) == 2
    lines = [json.loads(line) for line in datasets.snapshot_jsonl(snapshot=second)]
    assert len(lines) == 14
    assert lines[0]["messages"][-1] == {"role": "assistant", "content": SIGN_OFF}
    assert {line["split"] for line in lines} <= {"train", "heldout"}
    with pytest.raises(Exception, match="immutable"):
        second.save()


def test_a_domain_reaching_its_threshold_starts_a_run_by_itself(
    reviewer, short_domain, tiny_model, settings, django_capture_on_commit_callbacks, monkeypatch
):
    settings.SORA_FINETUNE_AUTO = True
    settings.SORA_EVAL_MIN_ITEMS = 0  # the wait for held-out items: test_learning_data.py
    short_domain.finetune_threshold = 5
    short_domain.save()
    queued = []
    monkeypatch.setattr(finetuning, "_dispatch", queued.append)  # the run itself is tested below

    with django_capture_on_commit_callbacks(execute=True):
        approve(reviewer, short_domain, 4)
    assert (FineTuneJob.objects.count(), datasets.new_examples_count(domain=short_domain)) == (0, 4)
    with django_capture_on_commit_callbacks(execute=True):
        approve(reviewer, short_domain, 1)

    job = FineTuneJob.objects.get()
    assert (job.trigger, job.snapshot.new_count, queued) == ("threshold", 5, [job.pk])
    assert datasets.new_examples_count(domain=short_domain) == 5  # new until a run on them succeeds
    with django_capture_on_commit_callbacks(execute=True):
        approve(reviewer, short_domain, 8)
    assert FineTuneJob.objects.count() == 1  # never two runs at once for one domain


# --- the loop --------------------------------------------------------------------


def test_approvals_train_a_candidate_that_is_promoted_and_writes_the_next_drafts(
    reviewer, manager, short_domain, tiny_model, django_capture_on_commit_callbacks
):
    approve_round(reviewer, short_domain)

    job = run_job(django_capture_on_commit_callbacks, domain=short_domain, user=manager, hyperparameters=LEARN)

    assert (job.status, job.outcome, job.attempts) == ("succeeded", "promoted", 1), (
        job.error,
        job.evaluation.get("reasons"),
    )
    assert job.loss_history[-1][1] < job.loss_history[0][1] / 2
    report = job.evaluation
    assert report["candidate"]["edit_distance"] < report["active"]["edit_distance"]
    assert report["heldout_items"] == job.snapshot.heldout_count > 0
    candidate = job.candidate
    assert (candidate.status, candidate.parent, active_version_for(domain_id=short_domain.pk)) == (
        "active",
        tiny_model,
        candidate,
    )
    # The next draft comes from the new version, at once.
    item = ItemFactory(domain=short_domain)
    with django_capture_on_commit_callbacks(execute=True):
        generation = services.generation_request(item_id=item.pk, user=reviewer)
    generation.refresh_from_db()
    assert (generation.status, generation.model_version) == (Generation.Status.DONE, candidate)


def test_a_candidate_that_is_no_better_is_kept_and_the_active_version_stays(
    reviewer, manager, short_domain, tiny_model, django_capture_on_commit_callbacks
):
    approve(reviewer, short_domain, 30)

    job = run_job(
        django_capture_on_commit_callbacks,
        domain=short_domain,
        user=manager,
        hyperparameters={**LEARN, "learning_rate": 0.0},  # learns nothing: the same drafts as its parent
    )

    assert (job.status, job.outcome) == ("succeeded", "kept_as_candidate"), job.error
    assert job.candidate.status == ModelVersion.Status.CANDIDATE
    assert active_version_for(domain_id=short_domain.pk) == tiny_model
    assert "not better" in job.evaluation["reasons"][0]


def test_a_second_round_continues_from_the_promoted_version_and_replays_earlier_data(
    reviewer, manager, short_domain, tiny_model, django_capture_on_commit_callbacks
):
    approve_round(reviewer, short_domain)
    first = run_job(django_capture_on_commit_callbacks, domain=short_domain, user=manager, hyperparameters=LEARN)
    assert first.outcome == "promoted", first.evaluation.get("reasons")
    approve(reviewer, short_domain, 8)

    second = run_job(django_capture_on_commit_callbacks, domain=short_domain, user=manager, hyperparameters=LEARN)

    assert second.base_version == first.candidate
    assert second.candidate.parent == first.candidate
    assert second.snapshot.new_count == 8
    assert second.evaluation["replay_items"] > 0


def test_one_unfinished_job_per_domain(reviewer, manager, short_domain, tiny_model, django_capture_on_commit_callbacks):
    approve(reviewer, short_domain, 8)  # 8: at least one lands in training (held out: 30% each)
    with django_capture_on_commit_callbacks(execute=False):
        finetune_job_start(domain=short_domain, user=manager)

    with pytest.raises(Conflict, match="already running"):
        finetune_job_start(domain=short_domain, user=manager)


def test_nothing_to_train_on_or_no_model_is_refused(manager, short_domain, tiny_model):
    with pytest.raises(Conflict, match="no corrections to train on"):
        finetune_job_start(domain=short_domain, user=manager)
    assert DatasetSnapshot.objects.count() == 0  # the refused start left nothing behind


def test_a_queued_job_cancelled_before_it_starts_never_trains(
    reviewer, manager, short_domain, tiny_model, django_capture_on_commit_callbacks
):
    approve(reviewer, short_domain, 8)  # 8: at least one lands in training (held out: 30% each)
    with django_capture_on_commit_callbacks(execute=False):
        job = finetune_job_start(domain=short_domain, user=manager)

    finetune_job_cancel(job_id=job.pk, user=manager)
    finetune_runner.finetune_job_run(job.pk)  # the task arrives late

    job.refresh_from_db()
    assert (job.status, job.attempts, job.candidate) == ("cancelled", 0, None)
    with pytest.raises(InvalidTransition):
        finetune_job_cancel(job_id=job.pk, user=manager)


def test_a_running_job_stops_at_its_next_step_when_cancelled(
    reviewer, manager, short_domain, tiny_model, django_capture_on_commit_callbacks, monkeypatch
):
    approve(reviewer, short_domain, 20)
    monkeypatch.setattr(finetune_runner, "REPORT_EVERY_SECONDS", 0)
    report = finetune_runner._Reporter.report

    def cancel_at_step_two(self, progress):
        report(self, progress)
        if progress.step == 2:
            FineTuneJob.objects.filter(pk=self.job_id).update(cancel_requested_at=timezone.now())

    monkeypatch.setattr(finetune_runner._Reporter, "report", cancel_at_step_two)

    job = run_job(django_capture_on_commit_callbacks, domain=short_domain, user=manager, hyperparameters=LEARN)

    assert (job.status, job.step, job.candidate) == ("cancelled", 2, None)


class WorkerLost(BaseException):
    """What a killed worker looks like from inside: the run just stops, nothing is recorded."""


def test_a_job_whose_worker_died_resumes_from_its_checkpoint(
    reviewer, manager, short_domain, tiny_model, django_capture_on_commit_callbacks, monkeypatch, settings
):
    approve(reviewer, short_domain, 20)
    monkeypatch.setattr(finetune_runner, "REPORT_EVERY_SECONDS", 0)
    report = finetune_runner._Reporter.report
    steps_seen = []

    def die_at_step_five(self, progress):
        steps_seen.append(progress.step)
        report(self, progress)
        if progress.step == 5 and steps_seen.count(5) == 1:
            raise WorkerLost()

    monkeypatch.setattr(finetune_runner._Reporter, "report", die_at_step_five)
    with django_capture_on_commit_callbacks(execute=False):
        job = finetune_job_start(domain=short_domain, user=manager, hyperparameters=LEARN)
    with pytest.raises(WorkerLost):
        finetune_runner.finetune_job_run(job.pk)
    job.refresh_from_db()
    assert (job.status, job.step) == ("running", 5)

    finetune_runner.finetune_job_run(job.pk)  # redelivered at once: the first worker's heartbeat is fresh
    job.refresh_from_db()
    assert job.attempts == 1

    settings.SORA_FINETUNE_STALE_SECONDS = 0
    assert finetune_jobs_sweep()["resent"] == [job.pk]  # the sweep sends it again; Celery runs it inline
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("succeeded", 2), job.error
    assert steps_seen[steps_seen.index(5) + 1] == 4  # resumed after the checkpoint at step 3
    assert [step for step, _ in job.loss_history] == list(range(1, job.total_steps + 1))


def test_a_rollback_points_the_domain_back_at_the_parent(
    reviewer, manager, short_domain, tiny_model, django_capture_on_commit_callbacks
):
    approve_round(reviewer, short_domain)
    job = run_job(django_capture_on_commit_callbacks, domain=short_domain, user=manager, hyperparameters=LEARN)
    assert job.outcome == "promoted"

    parent = version_rollback(domain=short_domain, user=manager)

    assert parent == tiny_model == active_version_for(domain_id=short_domain.pk)
    with pytest.raises(InvalidTransition, match="no earlier version"):
        version_rollback(domain=short_domain, user=manager)


def test_a_cancelled_runs_examples_are_still_new_for_the_next_one(
    reviewer, manager, short_domain, tiny_model, django_capture_on_commit_callbacks
):
    approve(reviewer, short_domain, 8)  # 8: at least one lands in training (held out: 30% each)
    with django_capture_on_commit_callbacks(execute=False):
        job = finetune_job_start(domain=short_domain, user=manager)
    finetune_job_cancel(job_id=job.pk, user=manager)

    assert datasets.new_examples_count(domain=short_domain) == 8


def test_a_worker_lost_during_evaluation_is_evaluated_again_without_training_again(
    reviewer, manager, short_domain, tiny_model, django_capture_on_commit_callbacks, monkeypatch, settings
):
    approve(reviewer, short_domain, 30)
    score = finetune_runner.evaluation.score
    calls = {"n": 0}

    def lost_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise WorkerLost()
        return score(*args, **kwargs)

    monkeypatch.setattr(finetune_runner.evaluation, "score", lost_once)
    with django_capture_on_commit_callbacks(execute=False):
        job = finetune_job_start(domain=short_domain, user=manager, hyperparameters=LEARN)
    with pytest.raises(WorkerLost):
        finetune_runner.finetune_job_run(job.pk)
    job.refresh_from_db()
    history, candidate = job.loss_history, job.candidate
    assert job.status == "evaluating"

    settings.SORA_FINETUNE_STALE_SECONDS = 0
    finetuning.finetune_jobs_sweep()

    job.refresh_from_db()
    assert (job.status, job.attempts, job.candidate, job.loss_history) == ("succeeded", 2, candidate, history)


def test_no_automatic_promotion_over_a_version_a_manager_changed_during_the_run(
    reviewer, manager, short_domain, tiny_model, django_capture_on_commit_callbacks, monkeypatch
):
    from models_app.services import activate

    approve_round(reviewer, short_domain)
    other = ModelVersion.objects.create(name="by-hand", base_model=tiny_model.base_model)
    report = finetune_runner._Reporter.report

    def manager_switches_meanwhile(self, progress):
        report(self, progress)
        if progress.step == 2:
            activate(version=other, domain=short_domain, user=manager)

    monkeypatch.setattr(finetune_runner._Reporter, "report", manager_switches_meanwhile)

    job = run_job(django_capture_on_commit_callbacks, domain=short_domain, user=manager, hyperparameters=LEARN)

    assert (job.status, job.outcome) == ("succeeded", "kept_as_candidate"), job.error
    assert any("active version changed" in reason for reason in job.evaluation["reasons"])
    assert active_version_for(domain_id=short_domain.pk) == other


def test_a_running_job_whose_worker_is_gone_is_cancelled_at_once(
    reviewer, manager, short_domain, tiny_model, django_capture_on_commit_callbacks, settings
):
    approve(reviewer, short_domain, 8)  # 8: at least one lands in training (held out: 30% each)
    with django_capture_on_commit_callbacks(execute=False):
        job = finetune_job_start(domain=short_domain, user=manager)
    FineTuneJob.objects.filter(pk=job.pk).update(status="running", attempts=1, heartbeat_at=timezone.now())
    settings.SORA_FINETUNE_STALE_SECONDS = 0

    finetune_job_cancel(job_id=job.pk, user=manager)

    job.refresh_from_db()
    assert job.status == "cancelled" and "stopped" in job.error
