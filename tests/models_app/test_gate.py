"""The evaluation gate: a paired comparison on this round's held-out items, with a confidence interval and a minimum.

The statistics are checked against numbers worked out by hand (Student's t with literal constants, the signed-rank
test by counting sign patterns); the runs use the tiny model, with the base model's general answers replaced by a
fixed short list (general_replay has its own tests in test_learning_data.py).
"""

import math

import pytest
from transformers import AutoTokenizer

from annotations import services
from models_app import datasets, finetune_runner, retrieval
from models_app.evaluation import Scores, capped_reference, decide, paired_gain
from models_app.finetuning import finetune_job_start
from models_app.models import FineTuneJob, ModelVersion
from models_app.selectors import active_version_for
from models_app.training import Example
from tests.factories import ItemFactory

T_975_DF3 = 3.182446  # Student's t, 97.5th percentile, 3 degrees of freedom (from a table)


def scores(distances: tuple[float, ...], replay_loss: float | None = None) -> Scores:
    return Scores(
        edit_distance=sum(distances) / len(distances),
        chrf=0.5,
        replay_loss=replay_loss,
        drafts=[""] * len(distances),
        distances=distances,
    )


ACTIVE = scores((0.5, 0.6, 0.7, 0.4))
CANDIDATE = scores((0.3, 0.5, 0.4, 0.4))  # gains 0.2, 0.1, 0.3, 0.0


def test_the_paired_gain_matches_a_hand_computed_example():
    mean = (0.2 + 0.1 + 0.3 + 0.0) / 4  # 0.15
    sd = math.sqrt(((0.2 - mean) ** 2 + (0.1 - mean) ** 2 + (0.3 - mean) ** 2 + (0.0 - mean) ** 2) / 3)  # 0.1291
    half = T_975_DF3 * sd / math.sqrt(4)  # 0.2054
    # Signed ranks: the tie (0.0) is left out; 0.1, 0.2, 0.3 rank 1, 2, 3, all positive, so W+ = 6, the largest
    # of the 2³ equally likely sign patterns: p = 1/8.
    gain = paired_gain(ACTIVE, CANDIDATE)

    assert gain.items == 4
    assert gain.mean == pytest.approx(0.15)
    assert gain.low == pytest.approx(mean - half, abs=1e-5)
    assert gain.high == pytest.approx(mean + half, abs=1e-5)
    assert gain.low == pytest.approx(-0.0554, abs=1e-4) and gain.high == pytest.approx(0.3554, abs=1e-4)
    assert gain.p_value == pytest.approx(1 / 8)
    assert (gain.wins, gain.ties, gain.losses) == (3, 1, 0)
    assert gain.as_dict()["ci95"] == [gain.low, gain.high]


# Better by 0.05 … 0.15 on eleven items, worse by 0.6 on the twelfth.
ELEVEN_BETTER = tuple(round(0.05 + 0.01 * i, 2) for i in range(11))
ACTIVE_12 = scores((0.3,) * 12)
ONE_ODD_ITEM = scores(tuple(0.3 - g for g in ELEVEN_BETTER) + (0.9,))


def test_one_odd_item_swings_the_mean_interval_but_not_the_ranks():
    # By hand: the loss has the largest size, rank 12, so W− = 12; the sign patterns of ranks 1…12 with W− ≤ 12
    # are the sets of distinct whole numbers summing to at most 12: 1+1+1+2+2+3+4+5+6+8+10+12+15 = 70 (partitions
    # of 0…12 into distinct parts), so p = 70 / 2¹² = 0.01709.
    gain = paired_gain(ACTIVE_12, ONE_ODD_ITEM)

    assert gain.mean == pytest.approx((sum(ELEVEN_BETTER) - 0.6) / 12)  # 0.0417
    assert gain.low < 0 < gain.high  # Student's t: the one loss widens the interval across zero
    assert gain.p_value == pytest.approx(70 / 4096, abs=1e-9)
    assert (gain.wins, gain.ties, gain.losses) == (11, 0, 1)


def test_identical_gains_are_confident_and_one_item_has_no_interval():
    same = paired_gain(scores((0.5, 0.5, 0.5)), scores((0.4, 0.4, 0.4)))
    one = paired_gain(scores((0.5,)), scores((0.1,)))
    no_change = paired_gain(scores((0.5, 0.4)), scores((0.5, 0.4)))

    assert (same.low, same.high) == pytest.approx((0.1, 0.1))
    assert same.p_value == pytest.approx(1 / 8)  # three untied wins: the best of 2³ sign patterns
    assert (same.wins, same.ties, same.losses) == (3, 0, 0)
    assert (one.low, one.high, one.as_dict()["ci95"]) == (None, None, None)
    assert one.p_value == pytest.approx(1 / 2)
    assert no_change.p_value == 1.0 and no_change.ties == 2


def test_a_candidate_better_on_average_but_not_confidently_is_refused():
    promote, reasons = decide(ACTIVE, CANDIDATE, margin=0.02, replay_tolerance=0.02)

    assert CANDIDATE.edit_distance <= ACTIVE.edit_distance - 0.02  # 0.40 against 0.55: past the margin
    assert promote is False
    assert reasons[0].endswith("better by the margin")
    assert "95% CI of the mean [-0.055, +0.355]" in reasons[1] and "signed-rank p = 0.125" in reasons[1]
    assert reasons[1].endswith("not confidently better (p ≥ 0.05)")


def test_a_candidate_better_on_most_items_is_promoted_though_one_item_is_worse():
    promote, reasons = decide(ACTIVE_12, ONE_ODD_ITEM, margin=0.02, replay_tolerance=0.02)

    assert promote is True
    assert "11 better / 0 same / 1 worse, signed-rank p = 0.017" in reasons[1]
    assert reasons[1].endswith("confidently better")


def test_a_candidate_better_on_every_item_is_promoted_unless_it_forgot_earlier_data():
    active = scores((0.5, 0.6, 0.7, 0.4, 0.55), replay_loss=2.0)
    better = scores((0.3, 0.45, 0.5, 0.25, 0.45), replay_loss=2.03)  # gains 0.2, 0.15, 0.2, 0.15, 0.1
    forgetful = scores((0.3, 0.45, 0.5, 0.25, 0.45), replay_loss=2.05)  # 2.5% above the active version's

    promoted, reasons = decide(active, better, margin=0.02, replay_tolerance=0.02)
    refused, why = decide(active, forgetful, margin=0.02, replay_tolerance=0.02)

    assert "signed-rank p = 0.031" in reasons[1]  # five untied wins: 1/2⁵
    assert promoted is True and reasons[1].endswith("confidently better") and reasons[2].endswith("no regression")
    assert refused is False and why[2].endswith("regressed beyond 2%")


def test_a_candidate_better_without_near_copies_but_worse_with_them_is_refused():
    served_active, served_worse = scores((0.02, 0.03, 0.01, 0.02, 0.02)), scores((0.10, 0.12, 0.08, 0.15, 0.10))
    active = scores((0.5, 0.6, 0.7, 0.4, 0.55))
    better = scores((0.3, 0.45, 0.5, 0.25, 0.45))

    kept, why = decide(
        active, better, margin=0.02, replay_tolerance=0.02, served_active=served_active, served_candidate=served_worse
    )
    promoted, reasons = decide(
        active, better, margin=0.02, replay_tolerance=0.02, served_active=served_active, served_candidate=served_active
    )

    assert kept is False and why[1].endswith("confidently better")
    assert why[2] == "with the nearest examples (as served) 0.110 vs 0.020: worse by more than 0.020"
    assert promoted is True and reasons[2].endswith("0.020 vs 0.020: no worse")


@pytest.fixture
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_a_long_reference_is_cut_to_the_drafts_token_limit_and_a_short_one_is_unchanged(tokenizer):
    long = "Hi Dana, thank you for your message about order 1042. Your parcel left our warehouse today. " * 5
    short = "Best regards, The Brightwater Support Team."
    short_length = len(tokenizer(short, add_special_tokens=False)["input_ids"])

    cut = capped_reference(tokenizer, long, 10)

    assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) == 10
    assert long.startswith(cut) and len(cut) < len(long)
    assert capped_reference(tokenizer, short, 256) == short
    assert capped_reference(tokenizer, short, short_length) == short  # exactly at the limit: whole
    one_less = capped_reference(tokenizer, short, short_length - 1)
    assert short.startswith(one_less) and one_less != short


# --- runs on the tiny model ----------------------------------------------------------------

LEARN = {"epochs": 2, "min_steps": 0, "learning_rate": 0.01, "batch_size": 4, "lora_rank": 8, "checkpoint_every": 50}
GENERAL = (
    [Example([{"role": "user", "content": "Say hi."}], "Hi.", 1.0)],
    [Example([{"role": "user", "content": "Bye?"}], "Bye.", 1.0)],
)


@pytest.fixture(autouse=True)
def adapters_in_tmp(settings, tmp_path):
    settings.SORA_ADAPTERS_DIR = tmp_path / "adapters"
    settings.SORA_REPLAY_DIR = tmp_path / "replay"


@pytest.fixture
def short_domain(domain, settings, monkeypatch):
    settings.SORA_HELDOUT_PERCENT = 30
    settings.SORA_FINETUNE_QUIET_SECONDS = 0
    domain.sampling = {"max_new_tokens": 12}
    domain.save()
    monkeypatch.setattr(finetune_runner, "general_examples", lambda base_model, on_item=None: GENERAL)
    return domain


def approve(reviewer, domain, count: int, final_text: str) -> list[int]:
    """Approve `count` corrected items; their item ids."""
    ids = []
    for n in range(count):
        item = ItemFactory(domain=domain, input=f"Customer message {n}: where is my parcel?", draft=f"Draft {n}.")
        claimed = services.item_claim_next(reviewer=reviewer)
        services.review_submit(
            item_id=claimed.pk, reviewer=reviewer, decision="approve", version=claimed.version, final_text=final_text
        )
        ids.append(item.pk)
    return ids


def run_job(django_capture_on_commit_callbacks, **kwargs) -> FineTuneJob:
    with django_capture_on_commit_callbacks(execute=True):
        job = finetune_job_start(**kwargs)
    job.refresh_from_db()
    return job


def held_out(item_ids: list[int]) -> int:
    return sum(1 for item_id in item_ids if datasets.example_split(item_id) == datasets.HELDOUT)


def test_too_few_held_out_items_and_the_gate_keeps_the_candidate_without_deciding(
    reviewer, manager, short_domain, tiny_model, settings, django_capture_on_commit_callbacks
):
    settings.SORA_EVAL_MIN_ITEMS = 40
    approve(reviewer, short_domain, 20, final_text="Best regards, The Brightwater Support Team.")

    job = run_job(django_capture_on_commit_callbacks, domain=short_domain, user=manager, hyperparameters=LEARN)

    assert (job.status, job.outcome) == ("succeeded", "kept_as_candidate"), job.error
    report = job.evaluation
    held = job.snapshot.heldout_count
    assert 0 < held < 40
    assert (report["decided"], report["promote"], report["heldout_items"], report["min_items"]) == (
        False,
        False,
        held,
        40,
    )
    (reason,) = report["reasons"]
    assert f"only {held} held-out items" in reason and "at least 40" in reason
    assert "active" not in report and "candidate" not in report  # neither version wrote a draft
    assert job.candidate.status == ModelVersion.Status.CANDIDATE
    assert active_version_for(domain_id=short_domain.pk) == tiny_model


def test_the_second_round_is_decided_on_its_own_held_out_items_only(
    reviewer, manager, short_domain, tiny_model, settings, django_capture_on_commit_callbacks
):
    settings.SORA_EVAL_MIN_ITEMS = 1000  # no version writes drafts here: the decision set is what is looked at
    first_ids = []
    while held_out(first_ids) < 1 or held_out(first_ids) == len(first_ids):  # some of each side
        first_ids += approve(reviewer, short_domain, 6, final_text="Round one: best regards.")
    first = run_job(django_capture_on_commit_callbacks, domain=short_domain, user=manager, hyperparameters=LEARN)
    assert first.status == "succeeded", first.error
    second_ids = []
    while held_out(second_ids) < 2:  # the split is a hash of the item: approve until this round holds some out
        second_ids += approve(reviewer, short_domain, 4, final_text="Round two: kind regards.")

    second = run_job(django_capture_on_commit_callbacks, domain=short_domain, user=manager, hyperparameters=LEARN)

    assert second.status == "succeeded", second.error
    # The first round's held-out items are still in the snapshot, but not in what this round is decided on.
    assert second.snapshot.heldout_count == held_out(first_ids) + held_out(second_ids)
    assert second.evaluation["heldout_items"] == held_out(second_ids)
    decided_on = finetune_runner.decision_set(second).served()
    assert [e.completion for e in decided_on] == ["Round two: kind regards."] * held_out(second_ids)


def test_a_round_with_no_held_out_items_of_its_own_is_not_decided_on_earlier_ones(
    reviewer, manager, short_domain, tiny_model, settings, django_capture_on_commit_callbacks
):
    settings.SORA_EVAL_MIN_ITEMS = 1
    first_ids = []
    while held_out(first_ids) < 1 or held_out(first_ids) == len(first_ids):
        first_ids += approve(reviewer, short_domain, 6, final_text="Round one: best regards.")
    first = run_job(django_capture_on_commit_callbacks, domain=short_domain, user=manager, hyperparameters=LEARN)
    assert first.status == "succeeded", first.error
    item = ItemFactory(domain=short_domain, input="Customer message: where is my parcel?", draft="Draft.")
    while datasets.example_split(item.pk) == datasets.HELDOUT:  # this round's one correction: a training example
        item.delete()
        item = ItemFactory(domain=short_domain, input="Customer message: where is my parcel?", draft="Draft.")
    claimed = services.item_claim_next(reviewer=reviewer)
    services.review_submit(
        item_id=claimed.pk, reviewer=reviewer, decision="approve", version=claimed.version, final_text="Round two."
    )

    second = run_job(django_capture_on_commit_callbacks, domain=short_domain, user=manager, hyperparameters=LEARN)

    assert finetune_runner.decision_set(second).served() == []
    assert (second.evaluation["decided"], second.evaluation["heldout_items"]) == (False, 0)
    assert "only 0 held-out items of this round" in second.evaluation["reasons"][0]


def test_the_evaluation_tells_the_live_channel_how_far_it_is(
    reviewer, manager, short_domain, tiny_model, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.SORA_EVAL_MIN_ITEMS = 1
    ids = []
    while held_out(ids) < 1:
        ids += approve(reviewer, short_domain, 4, final_text="Best regards, The Brightwater Support Team.")
    sent = []
    monkeypatch.setattr(finetune_runner, "send_event", lambda group, kind, data: sent.append(data))

    job = run_job(django_capture_on_commit_callbacks, domain=short_domain, user=manager, hyperparameters=LEARN)

    assert job.status == "succeeded", job.error
    stages = [data["stage"] for data in sent if data.get("stage")]
    # The first always goes out; later ones at most once a second.
    assert f"evaluating: the active version's draft 1 of {2 * held_out(ids)}" in stages  # unmatched + served
    assert all(stage.startswith("evaluating: the ") for stage in stages)
    # Each version was prompted as it is served: the base version with the nearest examples, the adapter with near ones.
    assert job.evaluation["retrieval_floor"] == {"active": 0.0, "candidate": settings.SORA_RETRIEVAL_FINETUNED_FLOOR}


def test_each_held_out_item_is_also_prompted_with_examples_from_outside_its_nearest(
    reviewer, manager, short_domain, tiny_model, settings
):
    kinds = ["parcel", "refund", "invoice", "discount", "address", "size", "cancel"]
    for n in range(40):
        kind = kinds[n % len(kinds)]
        ItemFactory(domain=short_domain, input=f"Question {n} about my {kind} {kind} {kind}.", draft="Draft.")
        claimed = services.item_claim_next(reviewer=reviewer)
        services.review_submit(
            item_id=claimed.pk, reviewer=reviewer, decision="approve", version=claimed.version,
            final_text=f"Reply {n} on the {kind}.",
        )  # fmt: skip
    job = finetune_job_start(domain=short_domain, user=manager, hyperparameters=LEARN)  # queued only: no run
    k = short_domain.retrieval_examples

    first, again = finetune_runner.decision_set(job), finetune_runner.decision_set(job)

    assert len(first.served()) == len(first.unmatched()) == job.snapshot.heldout_count > 0
    assert first == again  # drawn from a seed of the item: the same every time
    pool = [e for e in datasets.snapshot_examples(snapshot=job.snapshot, split=datasets.TRAIN) if e.weight > 0]
    retriever = retrieval.Retriever(retrieval.shots_from(pool))
    for served, unmatched in zip(first.served(), first.unmatched(), strict=True):
        assert served.messages[-1] == unmatched.messages[-1] and served.completion == unmatched.completion
        item_kind = served.messages[-1]["content"].split()[-1].rstrip(".")
        nearest = retriever.top([served.messages[-1]], k * retrieval.UNMATCHED_SKIP)
        near_texts = {shot.completion for shot in nearest}
        served_texts = [m["content"] for m in served.messages if m["role"] == "assistant"]
        unmatched_texts = [m["content"] for m in unmatched.messages if m["role"] == "assistant"]
        assert len(served_texts) == len(unmatched_texts) == k
        assert all(item_kind in text for text in served_texts)  # retrieval finds the same kind of request
        assert not near_texts & set(unmatched_texts)  # none of the nearest k × UNMATCHED_SKIP
    # A fine-tuned version is prompted as it would be served: with the near examples only (retrieval.shot_floor).
    floor = settings.SORA_RETRIEVAL_FINETUNED_FLOOR
    assert first.served(floor) == first.served()  # the same kind of request: near enough
    assert [e.messages for e in first.unmatched(floor)] == [[e.messages[-1]] for e in first.unmatched()]
