"""Learning from the first correction: approved (input, final text) pairs become earlier turns of the next prompts.

No fine-tune is involved: an approval changes the very next draft's prompt (models_app/retrieval.py).
"""

import json

import bm25s
import pytest
from django.core.exceptions import ValidationError

from annotations import services
from annotations.models import MAX_RETRIEVAL_EXAMPLES, Generation
from models_app import retrieval
from models_app.inference.prompts import build_messages
from models_app.models import ModelVersion
from models_app.retrieval import Retriever, Shot, prompt_for_item
from tests.factories import ItemFactory

PARCEL = "My parcel from the courier is late and the tracking page has not changed."
PARCEL_REPLY = "Hi Dana, the courier has your parcel; tracking updates within a day. Best regards, The Team."
REFUND = "I was charged twice on my invoice, please refund the duplicate payment."
REFUND_REPLY = "Hi Omar, we have refunded the duplicate payment to your card. Best regards, The Team."
NEW_PARCEL = "Where is my parcel? The courier tracking still says late."
# Only whether a version has an adapter matters to its prompt (retrieval.shot_floor).
BASE = ModelVersion(name="base", base_model="unused")
FINE_TUNED = ModelVersion(name="fine-tuned", base_model="unused", adapter_path="unused-adapter")


@pytest.fixture(autouse=True)
def fresh_indexes():
    """The per-process indexes are keyed by (domain id, example count, newest example id): ids come back after a
    test's rollback, so an index built by an earlier test must not answer for this one."""
    retrieval.domain_indexes.clear()
    yield
    retrieval.domain_indexes.clear()


def approve(reviewer, item, final_text: str | None = None, domain_slug: str | None = None) -> None:
    claimed = services.item_claim_next(reviewer=reviewer, domain=domain_slug)
    assert claimed.pk == item.pk
    services.review_submit(
        item_id=claimed.pk, reviewer=reviewer, decision="approve", version=claimed.version, final_text=final_text
    )


def user_turn(domain, text: str) -> dict:
    return {"role": "user", "content": domain.prompt_template.replace("{input}", text)}


def contents(messages: list[dict]) -> str:
    return json.dumps(messages, ensure_ascii=False)


def test_before_any_approval_the_prompt_is_just_the_domains_prompt(domain):
    domain.system_prompt = "You write replies for Brightwater."
    domain.save()
    item = ItemFactory(domain=domain, input=NEW_PARCEL)

    messages = prompt_for_item(item=item, version=BASE)

    assert messages == build_messages(
        system_prompt=domain.system_prompt, prompt_template=domain.prompt_template, input=NEW_PARCEL, metadata={}
    )
    assert [m["role"] for m in messages] == ["system", "user"]


def test_an_approved_correction_is_an_earlier_turn_of_the_next_similar_prompt(domain, reviewer):
    domain.system_prompt = "You write replies for Brightwater."
    domain.save()
    first = ItemFactory(domain=domain, input=PARCEL, draft="A draft nobody liked.")
    approve(reviewer, first, final_text=PARCEL_REPLY)
    second = ItemFactory(domain=domain, input=NEW_PARCEL)

    messages = prompt_for_item(item=second, version=BASE)

    assert messages == [
        {"role": "system", "content": "You write replies for Brightwater."},
        user_turn(domain, PARCEL),
        {"role": "assistant", "content": PARCEL_REPLY},
        user_turn(domain, NEW_PARCEL),
    ]


def test_the_most_similar_example_is_chosen_and_comes_last_before_the_new_input(domain, reviewer):
    refund = ItemFactory(domain=domain, input=REFUND, draft="Draft one.")
    approve(reviewer, refund, final_text=REFUND_REPLY)
    parcel = ItemFactory(domain=domain, input=PARCEL, draft="Draft two.")
    approve(reviewer, parcel, final_text=PARCEL_REPLY)
    new = ItemFactory(domain=domain, input=NEW_PARCEL)

    domain.retrieval_examples = 1
    domain.save()
    one = prompt_for_item(item=new, version=BASE)
    domain.retrieval_examples = 2
    domain.save()
    two = prompt_for_item(item=new, version=BASE)

    assert [m["content"] for m in one if m["role"] == "assistant"] == [PARCEL_REPLY]
    assert [m["content"] for m in two if m["role"] == "assistant"] == [REFUND_REPLY, PARCEL_REPLY]
    assert two[-3:] == [user_turn(domain, PARCEL), {"role": "assistant", "content": PARCEL_REPLY}, two[-1]]
    assert two[-1] == user_turn(domain, NEW_PARCEL)


def test_a_fine_tuned_version_is_shown_only_the_examples_near_the_input(domain, reviewer, settings):
    refund = ItemFactory(domain=domain, input=REFUND, draft="Draft one.")
    approve(reviewer, refund, final_text=REFUND_REPLY)
    parcel = ItemFactory(domain=domain, input=PARCEL, draft="Draft two.")
    approve(reviewer, parcel, final_text=PARCEL_REPLY)
    domain.retrieval_examples = 2
    domain.save()
    new_parcel = ItemFactory(domain=domain, input=NEW_PARCEL)
    new_kind = ItemFactory(domain=domain, input="Do you sell gift cards for a birthday present?")

    def shown(item, version) -> list[str]:
        return [m["content"] for m in prompt_for_item(item=item, version=version) if m["role"] == "assistant"]

    # A base version gets the house style from whatever is nearest; a fine-tuned one would copy a far example's answer.
    assert shown(new_parcel, BASE) == [REFUND_REPLY, PARCEL_REPLY]
    assert shown(new_parcel, FINE_TUNED) == [PARCEL_REPLY]
    assert sorted(shown(new_kind, BASE)) == sorted([REFUND_REPLY, PARCEL_REPLY])
    assert shown(new_kind, FINE_TUNED) == []
    settings.SORA_RETRIEVAL_FINETUNED_FLOOR = 0.0
    assert len(shown(new_kind, FINE_TUNED)) == 2


def test_retrieval_examples_zero_shows_no_examples(domain, reviewer):
    first = ItemFactory(domain=domain, input=PARCEL, draft="A draft nobody liked.")
    approve(reviewer, first, final_text=PARCEL_REPLY)
    domain.retrieval_examples = 0
    domain.save()
    second = ItemFactory(domain=domain, input=NEW_PARCEL)

    messages = prompt_for_item(item=second, version=BASE)

    assert messages == [user_turn(domain, NEW_PARCEL)]


def test_a_long_example_is_cut_so_the_new_input_keeps_its_place(domain, reviewer):
    article = PARCEL + " " + "The courier left a note. " * 200
    first = ItemFactory(domain=domain, input=article, draft="A draft nobody liked.")
    approve(reviewer, first, final_text=PARCEL_REPLY + " More detail." * 300)
    second = ItemFactory(domain=domain, input=NEW_PARCEL)

    shot_user, shot_reply, new_input = prompt_for_item(item=second, version=BASE)

    assert shot_user["content"] == user_turn(domain, article)["content"][: retrieval.MAX_SHOT_CHARS]
    assert len(shot_reply["content"]) == retrieval.MAX_SHOT_CHARS and shot_reply["content"].startswith(PARCEL_REPLY)
    assert new_input == user_turn(domain, NEW_PARCEL)  # the new input is never cut


def test_more_examples_per_prompt_than_the_limit_are_refused(domain):
    domain.retrieval_examples = MAX_RETRIEVAL_EXAMPLES + 1

    with pytest.raises(ValidationError) as refused:
        domain.full_clean()

    assert "retrieval_examples" in refused.value.message_dict


def test_a_model_draft_approved_unchanged_is_never_shown_as_an_example(
    domain, reviewer, integration, tiny_model, django_capture_on_commit_callbacks
):
    domain.sampling = {"max_new_tokens": 8}
    domain.save()
    with django_capture_on_commit_callbacks(execute=True):  # the draft is written by the tiny model, inline
        item, _ = services.item_submit(submitted_by=integration, domain=domain.slug, input=PARCEL)
    item.refresh_from_db()
    model_draft = item.generations.get(source=Generation.Source.MODEL, status=Generation.Status.DONE).text
    assert item.draft == model_draft != ""
    approve(reviewer, item)  # unchanged
    assert item.training_example.origin == "accepted"

    messages = prompt_for_item(item=ItemFactory(domain=domain, input=NEW_PARCEL), version=BASE)

    assert messages == [user_turn(domain, NEW_PARCEL)]
    assert model_draft not in contents(messages)


def test_a_submitted_draft_approved_unchanged_is_shown_as_an_example(domain, reviewer, integration):
    item, _ = services.item_submit(submitted_by=integration, domain=domain.slug, input=PARCEL, draft=PARCEL_REPLY)
    approve(reviewer, item)  # unchanged: a person wrote it

    messages = prompt_for_item(item=ItemFactory(domain=domain, input=NEW_PARCEL), version=BASE)

    assert messages == [
        user_turn(domain, PARCEL),
        {"role": "assistant", "content": PARCEL_REPLY},
        user_turn(domain, NEW_PARCEL),
    ]


def test_a_medical_note_is_shown_to_another_items_prompt_only_redacted(medical_note, reviewer, second_reviewer):
    medical_note.reviewers.add(reviewer, second_reviewer)
    first = ItemFactory(
        domain=medical_note,
        input="Patient: Aurelio Fanshawe. Cough for ten days, temperature 37.9, no chest pain.",
        metadata={"patient_name": "Aurelio Fanshawe"},
        draft="S: Aurelio Fanshawe has a cough.",
    )
    corrected = "S: Aurelio Fanshawe reports a cough for ten days. O: temperature 37.9. A: viral infection. P: 1. rest."
    approve(reviewer, first, final_text=corrected, domain_slug=medical_note.slug)
    approve(second_reviewer, first, domain_slug=medical_note.slug)  # medical notes need two approvals
    second = ItemFactory(
        domain=medical_note,
        input="Patient reports a cough for a week, temperature 38.1, no chest pain.",
        metadata={"patient_name": "Brigid Oyelaran"},
        draft="S: cough.",
    )

    messages = prompt_for_item(item=second, version=BASE)

    shown = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(shown) == 1 and "[NAME]" in shown[0] and "reports a cough for ten days" in shown[0]
    text = contents(messages)
    for secret in ("Aurelio", "Fanshawe"):
        assert secret not in text


def shot(example_id: int, text: str, completion: str = "An approved reply.") -> Shot:
    return Shot(example_id, [{"role": "user", "content": text}], completion)


def test_the_retriever_leaves_out_excluded_examples_and_still_returns_k():
    retriever = Retriever(
        [
            shot(1, "parcel courier tracking late"),
            shot(2, "parcel courier tracking"),
            shot(3, "late refund invoice payment"),
        ]
    )
    query = [{"role": "user", "content": "parcel courier tracking late"}]

    assert [s.example_id for s in retriever.top(query, 1)] == [1]
    assert [s.example_id for s in retriever.top(query, 2, exclude=frozenset({1}))] == [2, 3]
    assert retriever.top(query, 3, exclude=frozenset({1, 2, 3})) == []


def test_unmatched_examples_come_from_outside_the_nearest_and_the_same_seed_draws_the_same():
    words = ["parcel", "refund", "invoice", "discount", "address", "size"]
    retriever = Retriever([shot(n, f"{words[n % 6]} {words[n % 6]} question {n}") for n in range(30)])
    query = [{"role": "user", "content": "parcel parcel question"}]
    nearest = {s.example_id for s in retriever.top(query, 2 * retrieval.UNMATCHED_SKIP)}

    drawn = retriever.unmatched(query, 2, seed="item-7")

    assert len(drawn) == 2 and not nearest & {s.example_id for s in drawn}
    assert retriever.unmatched(query, 2, seed="item-7") == drawn
    taken = frozenset(s.example_id for s in drawn)
    again = {s.example_id for s in retriever.unmatched(query, 2, seed="item-7", exclude=taken)}
    assert len(again) == 2 and not again & (taken | nearest)
    assert retriever.unmatched(query, 0, seed="item-7") == []


def test_examples_with_an_empty_approved_text_are_not_indexed():
    retriever = Retriever([shot(1, "parcel courier", completion="   "), shot(2, "refund invoice")])

    found = retriever.top([{"role": "user", "content": "parcel courier"}], 2)

    assert [s.example_id for s in found] == [2]


def test_nearness_is_bm25s_own_score_over_the_inputs_score_against_itself():
    """Checked against the library: an index of the pool with the input added, scored for the input."""
    words = ["parcel", "refund", "invoice", "courier", "late", "voucher", "size", "exchange", "card", "gift"]
    texts = [" ".join(words[(n * 7 + j * 3) % 10] for j in range(3 + n % 9)) for n in range(30)]
    query = "my parcel is late and the voucher refund refund does not arrive"
    retriever = Retriever([shot(n, text) for n, text in enumerate(texts)])
    library = bm25s.BM25()
    library.index(bm25s.tokenize(texts + [query], stopwords="en", show_progress=False), show_progress=False)
    query_words = bm25s.tokenize(query, stopwords="en", show_progress=False, return_ids=False)[0]
    scores = library.get_scores(query_words)

    nearness = retriever.nearness([{"role": "user", "content": query}], retriever.shots)

    assert nearness == pytest.approx(list(scores[:-1] / scores[-1]), rel=1e-5)
    assert 0 < max(nearness) < 1
    assert retriever.nearness([{"role": "user", "content": "the and of"}], retriever.shots) == [0.0] * 30
