"""What an approval teaches, when it starts a run, and what a run trains on.

- origins: a correction weighs 2, a person's draft approved as written 1, the model's own draft approved
  unchanged 0 (replay only, never counted towards the threshold);
- the threshold waits for a quiet period, so a burst of approvals trains as one run on all of it;
- small sets train for more epochs (a step floor), and the first round already has replay.
"""

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from annotations import services
from annotations.exceptions import Conflict
from models_app import datasets, finetune_runner, finetuning, general_replay, tasks
from models_app.hyperparameters import TrainingSettings, planned_epochs, steps_for
from models_app.inference.local import LocalBackend
from models_app.models import FineTuneJob, TrainingExample
from models_app.training import Example
from tests.factories import ItemFactory


@pytest.fixture(autouse=True)
def adapters_in_tmp(settings, tmp_path):
    settings.SORA_ADAPTERS_DIR = tmp_path / "adapters"
    settings.SORA_REPLAY_DIR = tmp_path / "replay"


@pytest.fixture
def all_train(domain, settings):
    """Every example on the training side (the split is a hash of the item: none held out here)."""
    settings.SORA_HELDOUT_PERCENT = 0
    domain.sampling = {"max_new_tokens": 6}
    domain.save()
    return domain


def claim_and_approve(reviewer, final_text: str | None = None) -> None:
    claimed = services.item_claim_next(reviewer=reviewer)
    services.review_submit(
        item_id=claimed.pk, reviewer=reviewer, decision="approve", version=claimed.version, final_text=final_text
    )


def approve_corrections(reviewer, domain, count: int, start: int = 0) -> list[str]:
    texts = []
    for n in range(start, start + count):
        ItemFactory(domain=domain, input=f"Customer message {n}: my parcel {n} is late.", draft=f"Draft {n}.")
        texts.append(f"Hi, parcel {n} is on its way. Best regards, The Team.")
        claim_and_approve(reviewer, final_text=texts[-1])
    return texts


def approve_model_drafts(reviewer, integration, domain, count: int, django_capture_on_commit_callbacks) -> list[str]:
    """Items whose drafts the tiny model writes, approved exactly as it wrote them."""
    drafts = []
    for n in range(count):
        with django_capture_on_commit_callbacks(execute=True):
            item, _ = services.item_submit(
                submitted_by=integration, domain=domain.slug, input=f"Question {n} about an invoice refund."
            )
        item.refresh_from_db()
        assert item.status == "ready" and item.draft
        drafts.append(item.draft)
        claim_and_approve(reviewer)
    return drafts


# --- origins and weights ------------------------------------------------------------


def test_an_edited_approval_is_a_correction_weighing_double(domain, reviewer):
    ItemFactory(domain=domain, draft="Your parcel is lost.")
    claim_and_approve(reviewer, final_text="Your parcel is on its way.")

    example = TrainingExample.objects.get(domain=domain)

    assert (example.origin, example.weight, example.completion) == ("corrected", 2.0, "Your parcel is on its way.")


def test_a_submitted_draft_approved_unchanged_was_written_by_a_person(domain, reviewer, integration):
    services.item_submit(submitted_by=integration, domain=domain.slug, input="Where is it?", draft="On its way.")
    claim_and_approve(reviewer)

    example = TrainingExample.objects.get(domain=domain)

    assert (example.origin, example.weight, example.completion) == ("written", 1.0, "On its way.")


def test_a_model_draft_approved_unchanged_is_accepted_weighs_nothing_and_is_not_new_data(
    all_train, reviewer, integration, tiny_model, django_capture_on_commit_callbacks
):
    (draft,) = approve_model_drafts(reviewer, integration, all_train, 1, django_capture_on_commit_callbacks)

    example = TrainingExample.objects.get(domain=all_train)
    assert (example.origin, example.weight, example.completion) == ("accepted", 0.0, draft)
    assert datasets.new_examples_count(domain=all_train) == 0

    approve_corrections(reviewer, all_train, 2)
    assert datasets.new_examples_count(domain=all_train) == 2


# --- the trigger's quiet period ----------------------------------------------------


@pytest.fixture
def threshold_five(domain, settings, tiny_model, monkeypatch):
    settings.SORA_FINETUNE_AUTO = True
    settings.SORA_FINETUNE_QUIET_SECONDS = 60
    settings.SORA_HELDOUT_PERCENT = 0
    settings.SORA_EVAL_MIN_ITEMS = 0
    domain.finetune_threshold = 5
    domain.save()
    scheduled = []
    monkeypatch.setattr(
        tasks.finetune_check_task, "apply_async", lambda args, **kwargs: scheduled.append((args, kwargs))
    )
    queued = []
    monkeypatch.setattr(finetuning, "_dispatch", queued.append)  # the run itself is not this file's business
    return SimpleNamespace(domain=domain, scheduled=scheduled, queued=queued)


def test_each_approval_schedules_a_check_for_just_after_the_quiet_period(
    threshold_five, reviewer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        approve_corrections(reviewer, threshold_five.domain, 2)

    assert threshold_five.scheduled == [((threshold_five.domain.pk,), {"countdown": 61})] * 2


def test_no_check_is_scheduled_when_automatic_runs_are_off(
    threshold_five, reviewer, settings, django_capture_on_commit_callbacks
):
    settings.SORA_FINETUNE_AUTO = False

    with django_capture_on_commit_callbacks(execute=True):
        approve_corrections(reviewer, threshold_five.domain, 2)

    assert threshold_five.scheduled == []


def test_the_threshold_waits_for_the_quiet_period_and_then_trains_on_the_whole_burst(
    threshold_five, reviewer, monkeypatch, django_capture_on_commit_callbacks
):
    domain = threshold_five.domain
    approve_corrections(reviewer, domain, 5)
    assert finetuning.finetune_check(domain=domain) is None  # the last approval is recent: still busy
    approve_corrections(reviewer, domain, 2, start=5)  # the burst goes on
    assert finetuning.finetune_check(domain=domain) is None
    assert FineTuneJob.objects.count() == 0

    later = timezone.now() + timedelta(seconds=61)
    monkeypatch.setattr(finetuning, "timezone", SimpleNamespace(now=lambda: later))
    with django_capture_on_commit_callbacks(execute=True):
        job = finetuning.finetune_check(domain=domain)

    assert job is not None and FineTuneJob.objects.get() == job
    assert (job.trigger, job.snapshot.new_count, job.snapshot.train_count) == ("threshold", 7, 7)
    assert threshold_five.queued == [job.pk]
    assert finetuning.finetune_check(domain=domain) is None  # one run at a time


def test_approvals_that_never_pause_start_a_run_once_the_oldest_new_example_has_waited_long_enough(
    threshold_five, reviewer, settings, monkeypatch
):
    settings.SORA_FINETUNE_MAX_WAIT_SECONDS = 1800
    domain = threshold_five.domain
    real_now = timezone.now

    def approved_ago(seconds: int, count: int, start: int) -> None:
        with monkeypatch.context() as patched:  # the examples' created_at comes from django.utils.timezone.now
            patched.setattr(timezone, "now", lambda: real_now() - timedelta(seconds=seconds))
            approve_corrections(reviewer, domain, count, start=start)

    approved_ago(1700, 5, start=0)
    approve_corrections(reviewer, domain, 1, start=5)  # the approvals go on
    assert finetuning.finetune_check(domain=domain) is None  # the oldest has waited 1700 s of 1800

    approved_ago(1801, 1, start=6)
    approve_corrections(reviewer, domain, 1, start=7)  # and still they go on

    job = finetuning.finetune_check(domain=domain)
    assert job is not None and job.snapshot.new_count == 8


def test_the_quiet_period_does_not_start_a_run_below_the_threshold(threshold_five, reviewer, monkeypatch):
    approve_corrections(reviewer, threshold_five.domain, 4)
    later = timezone.now() + timedelta(seconds=600)
    monkeypatch.setattr(finetuning, "timezone", SimpleNamespace(now=lambda: later))

    assert finetuning.finetune_check(domain=threshold_five.domain) is None
    assert FineTuneJob.objects.count() == 0


def test_the_threshold_waits_until_the_gate_has_enough_held_out_items_to_decide(
    threshold_five, reviewer, settings, monkeypatch
):
    settings.SORA_HELDOUT_PERCENT = 50
    domain = threshold_five.domain
    later = timezone.now() + timedelta(seconds=3600)
    monkeypatch.setattr(finetuning, "timezone", SimpleNamespace(now=lambda: later))
    approved = 0
    while datasets.new_examples_count(domain=domain, split=datasets.HELDOUT) < 2 or approved < 5:
        approve_corrections(reviewer, domain, 1, start=approved)
        approved += 1
    # One more than the round holds: the split follows item ids, which depend on the tests run before.
    held_out = datasets.new_examples_count(domain=domain, split=datasets.HELDOUT)
    settings.SORA_EVAL_MIN_ITEMS = held_out + 1

    assert datasets.new_examples_count(domain=domain) >= 5  # past the threshold, the approvals quiet
    assert finetuning.finetune_check(domain=domain) is None  # but the gate could not decide on what is held out
    while datasets.new_examples_count(domain=domain, split=datasets.HELDOUT) < held_out + 1:
        assert finetuning.finetune_check(domain=domain) is None
        approve_corrections(reviewer, domain, 1, start=approved)
        approved += 1

    job = finetuning.finetune_check(domain=domain)
    assert job is not None and job.snapshot.heldout_count == held_out + 1


# --- epochs for small sets -----------------------------------------------------------

STEP_FLOOR = TrainingSettings(epochs=2, batch_size=4, min_steps=60, max_epochs=8)


@pytest.mark.parametrize(
    ("count", "chosen", "epochs", "steps"),
    [
        (40, STEP_FLOOR, 6, 60),  # 10 steps an epoch: 6 epochs reach 60 steps
        (400, STEP_FLOOR, 2, 200),  # already past the floor: the plain 2 epochs
        (41, STEP_FLOOR, 6, 66),  # 11 steps an epoch: ceil(60 / 11) = 6
        (4, STEP_FLOOR, 8, 8),  # the floor would need 60 epochs: capped at max_epochs
        (4, TrainingSettings(epochs=3, batch_size=4, min_steps=60, max_epochs=1), 3, 3),  # never below epochs
        (40, TrainingSettings(epochs=2, batch_size=4, min_steps=0, max_epochs=8), 2, 20),  # no floor
    ],
)
def test_planned_epochs_raise_small_sets_to_the_step_floor(count, chosen, epochs, steps):
    assert planned_epochs(count, chosen) == epochs
    assert steps_for(count, chosen) == steps


# --- what a first round trains on ------------------------------------------------------

GENERAL_REPLAY = [
    Example([{"role": "user", "content": f"General question {n}?"}], f"Answer {n}.", 1.0) for n in range(8)
]
GENERAL_FORGETTING = [Example([{"role": "user", "content": "Held back?"}], "Yes.", 1.0)]


@pytest.fixture
def fixed_general(monkeypatch):
    fixed = (GENERAL_REPLAY, GENERAL_FORGETTING)
    monkeypatch.setattr(finetune_runner, "general_examples", lambda base_model, on_item=None: fixed)


@pytest.fixture
def first_round(all_train, reviewer, integration, manager, tiny_model, monkeypatch, django_capture_on_commit_callbacks):
    """Six corrections and two model drafts approved unchanged; a job on them that is not run."""
    monkeypatch.setattr(finetuning, "_dispatch", lambda job_id: None)
    corrections = approve_corrections(reviewer, all_train, 6)
    accepted = approve_model_drafts(reviewer, integration, all_train, 2, django_capture_on_commit_callbacks)

    def start(**hyperparameters) -> FineTuneJob:
        return finetuning.finetune_job_start(domain=all_train, user=manager, hyperparameters=hyperparameters)

    return SimpleNamespace(corrections=corrections, accepted=accepted, start=start)


def test_a_first_round_trains_on_its_corrections_and_replays_accepted_drafts_and_general_answers(
    first_round, fixed_general
):
    job = first_round.start(replay_ratio=0.5, retrieval_share=0.0)

    data = finetune_runner.training_examples(job)

    new, replay = data.train[: data.counts["new"]], data.train[data.counts["new"] :]
    assert sorted(e.completion for e in new) == sorted(first_round.corrections)
    assert all(e.weight == 2.0 for e in new)
    # ceil(6 × 0.5) = 3 replayed: both accepted drafts, then one general answer where those run short.
    assert (data.counts["replay_earlier"], data.counts["replay_accepted"], data.counts["replay_general"]) == (0, 2, 1)
    assert sorted(e.completion for e in replay) == sorted([*first_round.accepted, GENERAL_REPLAY[0].completion])
    assert all(e.weight == 1.0 for e in replay)
    assert not set(first_round.accepted) & {e.completion for e in new}
    assert data.forgetting == GENERAL_FORGETTING  # nothing earlier yet: forgetting is measured on general prompts


def test_with_no_replay_ratio_a_first_round_trains_on_its_corrections_alone(first_round, fixed_general):
    job = first_round.start(replay_ratio=0.0, retrieval_share=0.0)

    data = finetune_runner.training_examples(job)

    assert sorted(e.completion for e in data.train) == sorted(first_round.corrections)


def test_with_retrieval_share_one_every_new_example_is_prompted_with_retrieved_examples(first_round, fixed_general):
    job = first_round.start(replay_ratio=0.0, retrieval_share=1.0)
    plain = {e.completion: e.messages for e in TrainingExample.objects.filter(domain=job.domain)}

    data = finetune_runner.training_examples(job)

    assert len(data.train) == 6
    turns = []
    for example in data.train:
        own = plain[example.completion]
        assert example.messages[-1] == own[-1]
        turns.append((len(example.messages) - len(own)) // 2)
        shown = [m["content"] for m in example.messages if m["role"] == "assistant"]
        assert example.completion not in shown  # never its own answer
        assert set(shown) <= set(first_round.corrections)  # accepted drafts are never shown as examples
    assert turns == [2] * 6  # each with its k = 2 nearest


def test_with_retrieval_share_zero_no_training_prompt_carries_examples(first_round, fixed_general):
    job = first_round.start(replay_ratio=0.0, retrieval_share=0.0)
    plain = {e.completion: e.messages for e in TrainingExample.objects.filter(domain=job.domain)}

    data = finetune_runner.training_examples(job)

    assert [e.messages for e in data.train] == [plain[e.completion] for e in data.train]


# --- the base model's answers to general prompts ------------------------------------------


def test_the_base_models_general_answers_are_written_once_and_kept_under_the_replay_dir(
    tiny_model_dir, settings, monkeypatch
):
    settings.SORA_GENERAL_ANSWER_TOKENS = 8  # a short limit: the tiny model answers quickly
    prompts = json.loads(general_replay.PROMPTS_FILE.read_text())

    progress = []

    first = general_replay.general_examples(str(tiny_model_dir), on_item=lambda *counts: progress.append(counts))

    assert progress == [(n, len(prompts)) for n in range(1, len(prompts) + 1)]  # the job's live stage follows it
    kept = list(settings.SORA_REPLAY_DIR.glob("general-*.json"))
    assert len(kept) == 1
    assert not list(settings.SORA_REPLAY_DIR.glob("*.partial"))
    answers = json.loads(kept[0].read_text())
    # The tiny model never ends an answer by itself: every one was cut at the limit. Replay leaves them out
    # (an answer cut short would teach the model to stop mid-sentence); forgetting measures them as they are.
    assert [answer["ends"] for answer in answers] == [False] * len(prompts)
    replay, forgetting = first
    assert replay == []
    measured = [answer["text"] for answer in answers[general_replay.GENERAL_TRAIN :] if answer["text"].strip()]
    assert [e.completion for e in forgetting] == measured and measured
    assert not any(e.ends for e in forgetting)

    def no_generation(*args, **kwargs):
        raise AssertionError("the kept answers must be read, not written again")

    monkeypatch.setattr(LocalBackend, "generate", no_generation)
    assert general_replay.general_examples(str(tiny_model_dir)) == first


def test_kept_general_answers_split_into_whole_replay_and_forgetting_that_measures_cut_ones_too(settings, tmp_path):
    prompts = json.loads(general_replay.PROMPTS_FILE.read_text())
    # Every fourth answer empty, every third cut at the token limit.
    answers = [{"text": f"Answer {n}." if n % 4 else "", "ends": bool(n % 3)} for n in range(len(prompts))]
    cache = general_replay._cache_file("some-model", prompts, settings.SORA_GENERAL_ANSWER_TOKENS)
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps(answers))

    replay, forgetting = general_replay.general_examples("some-model")

    train_part = general_replay.GENERAL_TRAIN
    assert [e.completion for e in replay] == [a["text"] for a in answers[:train_part] if a["text"] and a["ends"]]
    assert all(e.ends for e in replay)
    assert [(e.completion, e.ends) for e in forgetting] == [
        (a["text"], a["ends"]) for a in answers[train_part:] if a["text"]
    ]
    assert not all(e.ends for e in forgetting)  # the cut ones are measured as far as they go
    assert replay[0].messages == [{"role": "user", "content": prompts[1]}]
    assert all(e.weight == 1.0 for e in replay + forgetting)
    assert len(forgetting) >= 30  # enough prompts that one answer does not decide the gate's forgetting check


def test_a_run_on_model_drafts_approved_unchanged_only_is_refused_up_front(
    domain, reviewer, integration, manager, tiny_model, settings, django_capture_on_commit_callbacks
):
    settings.SORA_HELDOUT_PERCENT = 0
    approve_model_drafts(reviewer, integration, domain, 3, django_capture_on_commit_callbacks)

    with pytest.raises(Conflict, match="no corrections to train on"):
        finetuning.finetune_job_start(domain=domain, user=manager)
    assert FineTuneJob.objects.count() == 0
