import pytest

from annotations import services
from annotations.exceptions import IdempotencyKeyReused, InvalidInput
from annotations.models import AuditEvent, Generation, Item


def submit(user, **overrides):
    fields = {"domain": "customer_service", "input": "My kettle arrived broken.", "draft": "Sorry to hear that."}
    return services.item_submit(submitted_by=user, **{**fields, **overrides})


def test_item_with_a_draft_is_ready_for_review(integration, customer_service):
    item, created = submit(integration, external_id="T-1", metadata={"order_id": "BW-1"}, priority=3)

    assert created
    assert item.status == Item.Status.READY
    assert item.draft == "Sorry to hear that."
    assert (item.external_id, item.metadata, item.priority) == ("T-1", {"order_id": "BW-1"}, 3)
    generation = Generation.objects.get(item=item)
    assert (generation.source, generation.text) == (Generation.Source.SUBMITTED, item.draft)
    event = AuditEvent.objects.get(target_type="annotations.item", target_id=str(item.pk))
    assert (event.verb, event.actor, event.after["status"]) == ("item.submitted", integration, "ready")


def test_item_without_a_draft_is_queued_for_generation(integration, customer_service):
    item, _ = submit(integration, draft=None)

    assert item.status == Item.Status.QUEUED
    generation = item.generations.get()
    assert (generation.source, generation.status) == (Generation.Source.MODEL, Generation.Status.QUEUED)


def test_unknown_domain_is_refused_naming_the_field(integration, db):
    with pytest.raises(InvalidInput) as error:
        submit(integration, domain="astrology")

    assert "domain" in error.value.extra["errors"]
    assert not Item.objects.exists()


def test_same_idempotency_key_and_body_returns_the_same_item(integration, customer_service):
    first, created_first = submit(integration, idempotency_key="abc")
    again, created_again = submit(integration, idempotency_key="abc")

    assert (created_first, created_again) == (True, False)
    assert again.pk == first.pk
    assert Item.objects.count() == 1


def test_same_idempotency_key_with_another_body_is_refused(integration, customer_service):
    submit(integration, idempotency_key="abc")

    with pytest.raises(IdempotencyKeyReused):
        submit(integration, idempotency_key="abc", input="A different message.")
    assert Item.objects.count() == 1


def test_idempotency_keys_belong_to_their_user(integration, manager, customer_service):
    mine, _ = submit(integration, idempotency_key="abc")
    theirs, created = submit(manager, idempotency_key="abc", input="Another system's request.")

    assert created
    assert theirs.pk != mine.pk
