"""Drafts written by the model: the request, the worker's run, cancel, failures (annotations/services/generation.py).

Celery is eager in the test settings: a queued generation runs when its
transaction commits, so `django_capture_on_commit_callbacks(execute=True)`
plays the worker.
"""

import pytest
from django.utils import timezone

from annotations import services
from annotations.exceptions import InvalidTransition, NotAllowed, NotFound
from annotations.models import AuditEvent, Generation, Item
from annotations.services import generation as generation_module
from annotations.services.generation import ChunkStream, generation_queue
from models_app.inference import GenerationFailed, GenerationOutput
from models_app.models import ActiveModel
from tests.factories import ItemFactory, reviewer_factory

MAX_TOKENS = 24


@pytest.fixture
def short_drafts(domain):
    domain.sampling = {"max_new_tokens": MAX_TOKENS}
    domain.save()
    return domain


def submit_without_draft(user, domain, capture):
    with capture(execute=True):
        item, _ = services.item_submit(submitted_by=user, domain=domain.slug, input="Where is my parcel?")
    item.refresh_from_db()
    return item


class FakeBackend:
    """Stands in for the model where a test needs a failure or a cancel at an exact moment."""

    def __init__(self, pieces=("Hello", " there", " friend"), raise_after=None, on_piece=None):
        self.pieces, self.raise_after, self.on_piece = pieces, raise_after, on_piece

    def generate(self, model, messages, sampling, on_text, should_stop):
        sent = []
        for index, piece in enumerate(self.pieces):
            if self.raise_after is not None and index == self.raise_after:
                raise self.raise_after_error
            on_text(piece)
            sent.append(piece)
            if self.on_piece:
                self.on_piece(index)
            if should_stop():
                return GenerationOutput(text="".join(sent), cancelled=True)
        return GenerationOutput(text="".join(sent), token_logprobs=[-0.5] * len(sent))


def use_backend(monkeypatch, backend):
    monkeypatch.setattr(generation_module, "get_backend", lambda: backend)


def test_an_item_without_a_draft_gets_one_from_the_active_model(
    integration, short_drafts, tiny_model, django_capture_on_commit_callbacks
):
    item = submit_without_draft(integration, short_drafts, django_capture_on_commit_callbacks)

    generation = item.generations.get()
    assert item.status == Item.Status.READY
    assert item.draft == generation.text != ""
    assert (generation.status, generation.model_version, generation.source) == (
        Generation.Status.DONE,
        tiny_model,
        Generation.Source.MODEL,
    )
    assert len(generation.token_logprobs) == MAX_TOKENS
    assert item.uncertainty == pytest.approx(-sum(generation.token_logprobs) / MAX_TOKENS)
    assert generation.seq >= 2  # streamed in several chunks
    events = AuditEvent.objects.filter(target_type="annotations.item", target_id=str(item.pk)).order_by("id")
    verbs = list(events.values_list("verb", flat=True))
    assert verbs == ["item.submitted", "item.generating", "item.generated"]


def test_without_an_active_model_the_item_fails_with_the_reason(
    integration, short_drafts, tiny_model, django_capture_on_commit_callbacks
):
    ActiveModel.objects.filter(domain=short_drafts).delete()

    item = submit_without_draft(integration, short_drafts, django_capture_on_commit_callbacks)

    generation = item.generations.get()
    assert item.status == Item.Status.FAILED
    assert generation.status == Generation.Status.FAILED
    assert "No active model" in generation.error and "prepare_model" in generation.error


def test_a_backend_failure_fails_the_item_and_keeps_the_message(
    integration, short_drafts, tiny_model, monkeypatch, django_capture_on_commit_callbacks
):
    backend = FakeBackend(raise_after=1)
    backend.raise_after_error = GenerationFailed("The inference server answered 503: busy")
    use_backend(monkeypatch, backend)

    item = submit_without_draft(integration, short_drafts, django_capture_on_commit_callbacks)

    assert item.status == Item.Status.FAILED
    assert item.generations.get().error == "The inference server answered 503: busy"


def test_an_unexpected_exception_fails_the_item_without_leaking_internals(
    integration, short_drafts, tiny_model, monkeypatch, settings, django_capture_on_commit_callbacks
):
    settings.SORA_STREAM_FLUSH_MS = 60_000  # chunks by piece count only: the first piece alone goes out
    backend = FakeBackend(raise_after=2)
    backend.raise_after_error = RuntimeError("CUDA out of memory at 0xdeadbeef")
    use_backend(monkeypatch, backend)

    item = submit_without_draft(integration, short_drafts, django_capture_on_commit_callbacks)

    generation = item.generations.get()
    assert item.status == Item.Status.FAILED
    assert generation.error == "Generation failed (RuntimeError); the worker log has the details."
    assert generation.text == "Hello"  # what the viewers saw before the failure (" there" was not sent yet)


def test_regenerating_a_ready_item_replaces_its_draft(
    reviewer, short_drafts, tiny_model, django_capture_on_commit_callbacks
):
    item = ItemFactory(domain=short_drafts, draft="An old draft.")

    with django_capture_on_commit_callbacks(execute=True):
        services.generation_request(item_id=item.pk, user=reviewer)

    item.refresh_from_db()
    latest = item.generations.order_by("-id").first()
    assert item.status == Item.Status.READY
    assert item.draft == latest.text != "An old draft."
    assert item.version == 4  # queued, generating, ready


def test_the_lease_holder_regenerates_without_losing_the_lease(
    reviewer, short_drafts, tiny_model, django_capture_on_commit_callbacks
):
    ItemFactory(domain=short_drafts)
    claimed = services.item_claim_next(reviewer=reviewer)

    with django_capture_on_commit_callbacks(execute=True):
        services.generation_request(item_id=claimed.pk, user=reviewer)

    item = Item.objects.get(pk=claimed.pk)
    assert (item.status, item.lease_owner) == (Item.Status.IN_REVIEW, reviewer)
    assert item.version == claimed.version + 1  # the new draft: a save against the old version is refused
    assert item.draft == item.generations.order_by("-id").first().text


def test_who_may_ask_for_a_draft(reviewer, second_reviewer, integration, short_drafts, tiny_model):
    item = ItemFactory(domain=short_drafts, submitted_by=integration)
    outsider = reviewer_factory(ItemFactory().domain)

    with pytest.raises(NotAllowed):
        services.generation_request(item_id=item.pk, user=integration)  # sees what it submitted, may not generate
    with pytest.raises(NotFound):
        services.generation_request(item_id=item.pk, user=outsider)

    services.item_claim_next(reviewer=reviewer)
    with pytest.raises(InvalidTransition, match="Another reviewer holds"):
        services.generation_request(item_id=item.pk, user=second_reviewer)


def test_no_new_draft_for_a_decided_item_or_while_one_is_written(reviewer, short_drafts, tiny_model):
    decided = ItemFactory(domain=short_drafts, status=Item.Status.APPROVED)
    busy = ItemFactory(domain=short_drafts)
    services.generation_request(item_id=busy.pk, user=reviewer)  # queued (the worker runs on commit)

    with pytest.raises(InvalidTransition, match="approved"):
        services.generation_request(item_id=decided.pk, user=reviewer)
    with pytest.raises(InvalidTransition, match="already being written"):
        services.generation_request(item_id=busy.pk, user=reviewer)


def test_cancel_before_the_worker_starts_ends_the_generation_at_once(reviewer, short_drafts, tiny_model):
    with_draft = ItemFactory(domain=short_drafts, draft="Kept draft.")
    without = ItemFactory(domain=short_drafts, draft="")
    for item in (with_draft, without):
        services.generation_request(item_id=item.pk, user=reviewer)
        generation = services.generation_cancel(item_id=item.pk, user=reviewer)
        assert generation.status == Generation.Status.CANCELLED
        services.generation_run(generation.pk)  # the worker's delivery arrives later and does nothing

    with_draft.refresh_from_db()
    without.refresh_from_db()
    assert (with_draft.status, with_draft.draft) == (Item.Status.READY, "Kept draft.")
    assert without.status == Item.Status.FAILED
    assert services.generation_cancel(item_id=without.pk, user=reviewer) is None  # nothing left to cancel


def test_cancel_while_streaming_stops_the_backend_and_keeps_the_old_draft(
    reviewer, short_drafts, tiny_model, monkeypatch
):
    item = ItemFactory(domain=short_drafts, draft="Kept draft.")
    generation = services.generation_request(item_id=item.pk, user=reviewer)

    def cancel_after_first_piece(index):
        if index == 0:
            services.generation_cancel(item_id=item.pk, user=reviewer)

    use_backend(monkeypatch, FakeBackend(pieces=["One", " two", " three", " four"], on_piece=cancel_after_first_piece))
    monkeypatch.setattr(generation_module.CancelPoll, "__init__", _poll_every_call)

    services.generation_run(generation.pk)

    generation.refresh_from_db()
    item.refresh_from_db()
    assert (generation.status, generation.text) == (Generation.Status.CANCELLED, "One")
    assert (item.status, item.draft) == (Item.Status.READY, "Kept draft.")


def _poll_every_call(self, stream, every=0.05):
    self.stream, self.every = stream, 0.0


def test_storing_a_chunk_notices_a_cancel_without_a_separate_read(
    reviewer, short_drafts, tiny_model, monkeypatch, settings
):
    settings.SORA_STREAM_FLUSH_PIECES = 1  # every piece is a chunk
    item = ItemFactory(domain=short_drafts, draft="Kept draft.")
    generation = services.generation_request(item_id=item.pk, user=reviewer)

    def cancel_after_first_piece(index):
        if index == 0:
            services.generation_cancel(item_id=item.pk, user=reviewer)

    use_backend(monkeypatch, FakeBackend(pieces=["One", " two", " three"], on_piece=cancel_after_first_piece))
    monkeypatch.setattr(generation_module.CancelPoll, "__init__", _never_poll)

    services.generation_run(generation.pk)

    generation.refresh_from_db()
    assert (generation.status, generation.text) == (Generation.Status.CANCELLED, "One two")


def _never_poll(self, stream, every=0.05):
    self.stream, self.every = stream, 3600.0


def test_a_decision_taken_while_the_draft_was_written_stands(reviewer, short_drafts, tiny_model, monkeypatch):
    item = ItemFactory(domain=short_drafts, draft="Approved as it was.")
    generation = services.generation_request(item_id=item.pk, user=reviewer)

    def approve_meanwhile(index):
        if index == 0:
            Item.objects.filter(pk=item.pk).update(status=Item.Status.APPROVED)

    use_backend(monkeypatch, FakeBackend(on_piece=approve_meanwhile))
    services.generation_run(generation.pk)

    item.refresh_from_db()
    assert (item.status, item.draft) == (Item.Status.APPROVED, "Approved as it was.")
    assert Generation.objects.get(pk=generation.pk).status == Generation.Status.DONE


def test_a_first_approval_taken_while_the_draft_was_written_keeps_its_draft(
    reviewer, short_drafts, tiny_model, monkeypatch
):
    item = ItemFactory(domain=short_drafts, draft="Approved once as it was.")
    generation = services.generation_request(item_id=item.pk, user=reviewer)

    def first_approval_meanwhile(index):
        if index == 0:  # the domain needs two approvals: the item is ready again, with one
            Item.objects.filter(pk=item.pk).update(approvals=1, final_text="Approved once as it was.")

    use_backend(monkeypatch, FakeBackend(on_piece=first_approval_meanwhile))
    services.generation_run(generation.pk)

    item.refresh_from_db()
    assert item.draft == "Approved once as it was."  # what the first reviewer approved is still the draft


def test_a_generation_whose_worker_died_starts_again_and_gives_up_after_three(reviewer, short_drafts, tiny_model):
    item = ItemFactory(domain=short_drafts, draft="")
    retried = generation_queue(item=item, requested_by=reviewer)
    Generation.objects.filter(pk=retried.pk).update(status="streaming", text="half a dra", seq=3, attempts=1)

    services.generation_run(retried.pk)

    retried.refresh_from_db()
    assert retried.status == Generation.Status.DONE and retried.attempts == 2
    assert not retried.text.startswith("half a dra")

    lost = generation_queue(item=ItemFactory(domain=short_drafts, draft=""), requested_by=reviewer)
    Generation.objects.filter(pk=lost.pk).update(status="streaming", attempts=3, started_at=timezone.now())
    services.generation_run(lost.pk)
    lost.refresh_from_db()
    assert lost.status == Generation.Status.FAILED and "lost 3 times" in lost.error


def test_chunks_go_out_first_at_once_then_every_few_pieces(reviewer, short_drafts, settings):
    settings.SORA_STREAM_FLUSH_MS = 60_000  # only the piece count decides here
    settings.SORA_STREAM_FLUSH_PIECES = 3
    generation = Generation.objects.create(item=ItemFactory(domain=short_drafts), status=Generation.Status.STREAMING)
    stream = ChunkStream(generation)

    for piece in ["a", "b", "c", "d", "e", "f"]:
        stream.add(piece)
    stored_before_final_flush = Generation.objects.get(pk=generation.pk)
    stream.flush()

    assert (stored_before_final_flush.text, stored_before_final_flush.seq) == ("abcd", 2)  # "a", then "bcd"
    stored = Generation.objects.get(pk=generation.pk)
    assert (stored.text, stored.seq, stream.text) == ("abcdef", 3, "abcdef")


def test_viewers_left_behind_by_a_dead_server_are_pruned(reviewer, short_drafts):
    from datetime import timedelta

    from collab.models import Viewer
    from collab.tasks import viewers_prune_task

    item = ItemFactory(domain=short_drafts)
    stale = Viewer.objects.create(item=item, user=reviewer, channel_name="gone")
    Viewer.objects.filter(pk=stale.pk).update(connected_at=timezone.now() - timedelta(hours=13))
    Viewer.objects.create(item=item, user=reviewer, channel_name="here")

    assert viewers_prune_task() == 1
    assert list(Viewer.objects.values_list("channel_name", flat=True)) == ["here"]


# --- what the review of the first version found ---------------------------------


def test_a_broker_down_at_submission_loses_nothing(
    api, integration, short_drafts, tiny_model, monkeypatch, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from kombu.exceptions import OperationalError

    from annotations.tasks import generate_draft

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to redis: Connection refused.")

    monkeypatch.setattr(generate_draft, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.as_user(integration).post(
            "/api/v1/items/", {"domain": short_drafts.slug, "input": "Where is it?"}, format="json"
        )
    assert response.status_code == 201, response.content
    generation = Generation.objects.get(item_id=response.json()["id"])
    assert (generation.status, generation.dispatched_at) == (Generation.Status.QUEUED, None)

    monkeypatch.undo()  # the broker is back
    Generation.objects.filter(pk=generation.pk).update(created_at=timezone.now() - timedelta(minutes=1))
    assert services.generation.generations_sweep() == {"resent": 1, "failed": 0}

    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE and generation.dispatched_at is not None
    assert Item.objects.get(pk=generation.item_id).status == Item.Status.READY


def test_a_draft_whose_worker_died_is_failed_by_the_sweep_and_can_be_cancelled_at_once(
    reviewer, short_drafts, tiny_model, settings
):
    from datetime import timedelta

    long_ago = timezone.now() - timedelta(seconds=settings.SORA_GENERATION_STALE_SECONDS + 1)
    swept = generation_queue(item=ItemFactory(domain=short_drafts, draft=""), requested_by=reviewer)
    cancelled_item = ItemFactory(domain=short_drafts, draft="Kept.")
    cancelled = generation_queue(item=cancelled_item, requested_by=reviewer)
    fresh = generation_queue(item=ItemFactory(domain=short_drafts), requested_by=reviewer)
    Generation.objects.filter(pk__in=[swept.pk, cancelled.pk]).update(status="streaming", heartbeat_at=long_ago)
    Generation.objects.filter(pk=fresh.pk).update(status="streaming", heartbeat_at=timezone.now())

    services.generation_cancel(item_id=cancelled_item.pk, user=reviewer)
    assert services.generation.generations_sweep()["failed"] == 1

    swept.refresh_from_db()
    assert (swept.status, swept.error) == (Generation.Status.FAILED, "The worker writing it stopped responding.")
    assert Generation.objects.get(pk=cancelled.pk).status == Generation.Status.CANCELLED
    assert Generation.objects.get(pk=fresh.pk).status == Generation.Status.STREAMING
    services.generation_request(item_id=cancelled_item.pk, user=reviewer)  # no longer refused with 409


def test_a_worker_whose_generation_was_ended_stops_writing(reviewer, short_drafts, tiny_model, monkeypatch):
    item = ItemFactory(domain=short_drafts, draft="Kept.")
    generation = services.generation_request(item_id=item.pk, user=reviewer)

    def swept_meanwhile(index):
        if index == 0:
            Generation.objects.filter(pk=generation.pk).update(status="failed", error="swept")

    use_backend(monkeypatch, FakeBackend(pieces=["a"] * 20, on_piece=swept_meanwhile))
    services.generation_run(generation.pk)

    generation.refresh_from_db()
    assert (generation.status, generation.error, generation.text) == ("failed", "swept", "a")


def test_every_failure_ends_the_stream_with_an_error_even_for_an_item_in_review(
    reviewer, short_drafts, tiny_model, monkeypatch
):
    sent = []
    monkeypatch.setattr(generation_module, "send_event_on_commit", lambda group, type, payload: sent.append(type))
    ItemFactory(domain=short_drafts)
    claimed = services.item_claim_next(reviewer=reviewer)
    generation = services.generation_request(item_id=claimed.pk, user=reviewer)
    ActiveModel.objects.filter(domain=short_drafts).delete()

    services.generation_run(generation.pk)

    assert sent == ["error"]
    assert Item.objects.get(pk=claimed.pk).status == Item.Status.IN_REVIEW


def test_a_decision_stops_the_draft_being_written_and_links_the_right_generation(reviewer, short_drafts, tiny_model):
    ItemFactory(domain=short_drafts, draft="The reviewed draft.")
    claimed = services.item_claim_next(reviewer=reviewer)
    submitted = claimed.generations.get()
    generation = services.generation_request(item_id=claimed.pk, user=reviewer)  # queued, not run yet

    review = services.review_submit(
        item_id=claimed.pk, reviewer=reviewer, decision="approve", version=Item.objects.get(pk=claimed.pk).version
    )
    services.generation_run(generation.pk)

    assert Generation.objects.get(pk=generation.pk).status == Generation.Status.CANCELLED
    assert review.correction.generation == submitted  # the generation that wrote the approved draft
    assert Item.objects.get(pk=claimed.pk).draft == "The reviewed draft."


def test_no_new_draft_after_a_first_approval(reviewer, second_reviewer, medical_note, tiny_model):
    medical_note.reviewers.add(reviewer, second_reviewer)
    ItemFactory(domain=medical_note)
    claimed = services.item_claim_next(reviewer=reviewer, domain=medical_note.slug)
    services.review_submit(item_id=claimed.pk, reviewer=reviewer, decision="approve", version=claimed.version)

    with pytest.raises(InvalidTransition, match="already has an approval"):
        services.generation_request(item_id=claimed.pk, user=second_reviewer)


def test_only_the_lease_holder_may_cancel_a_draft_of_an_item_in_review(reviewer, second_reviewer, short_drafts):
    ItemFactory(domain=short_drafts)
    claimed = services.item_claim_next(reviewer=reviewer)
    services.generation_request(item_id=claimed.pk, user=reviewer)

    with pytest.raises(InvalidTransition, match="Another reviewer holds"):
        services.generation_cancel(item_id=claimed.pk, user=second_reviewer)
    assert services.generation_cancel(item_id=claimed.pk, user=reviewer).status == Generation.Status.CANCELLED
