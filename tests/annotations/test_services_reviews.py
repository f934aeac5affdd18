from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from annotations import services
from annotations.exceptions import InvalidInput, LeaseLost, StaleVersion
from annotations.models import AuditEvent, Claim, Correction, Item, Review
from tests.factories import DomainFactory, ItemFactory, reviewer_factory


def claim(reviewer) -> Item:
    return services.item_claim_next(reviewer=reviewer)


def test_approve_with_an_edit_writes_the_correction(reviewer, item):
    claimed = claim(reviewer)

    review = services.review_submit(
        item_id=item.pk,
        reviewer=reviewer,
        decision="approve",
        version=claimed.version,
        final_text="Hello, your parcel left our depot today.",
        scores={"accuracy": 5, "tone": 4},
    )

    item.refresh_from_db()
    assert (item.status, item.final_text, item.approvals) == ("approved", review.final_text, 1)
    assert item.lease_owner is None
    correction = Correction.objects.get(review=review)
    assert correction.draft == "Hello, your parcel is on its way."
    assert correction.final == "Hello, your parcel left our depot today."
    assert correction.edited is True
    assert 0 < correction.edit_distance < 1
    assert ["delete", "is on its way."] in correction.diff
    assert ["insert", "left our depot today."] in correction.diff
    assert Claim.objects.get(item=item).end_reason == Claim.EndReason.REVIEWED
    assert review.scores == {"accuracy": 5, "tone": 4}
    assert AuditEvent.objects.filter(verb="item.approved", target_id=str(item.pk), actor=reviewer).exists()


def test_approve_without_text_keeps_the_draft(reviewer, item):
    claimed = claim(reviewer)

    review = services.review_submit(item_id=item.pk, reviewer=reviewer, decision="approve", version=claimed.version)

    correction = review.correction
    assert (correction.final, correction.edited, correction.edit_distance) == (item.draft, False, 0.0)
    assert correction.diff == [["equal", item.draft]]


def test_reject_needs_a_reason(reviewer, item):
    claimed = claim(reviewer)

    with pytest.raises(InvalidInput) as error:
        services.review_submit(item_id=item.pk, reviewer=reviewer, decision="reject", version=claimed.version)
    assert "reason" in error.value.extra["errors"]

    services.review_submit(
        item_id=item.pk, reviewer=reviewer, decision="reject", version=claimed.version, reason="Wrong customer."
    )
    item.refresh_from_db()
    assert item.status == Item.Status.REJECTED
    assert not Correction.objects.exists()
    assert Review.objects.get(item=item).reason == "Wrong customer."


def test_stale_version_is_refused_and_nothing_is_written(reviewer, item):
    claimed = claim(reviewer)

    with pytest.raises(StaleVersion):
        services.review_submit(item_id=item.pk, reviewer=reviewer, decision="approve", version=claimed.version - 1)

    item.refresh_from_db()
    assert (item.status, item.version) == (Item.Status.IN_REVIEW, claimed.version)
    assert not Review.objects.exists() and not Correction.objects.exists()


def test_lost_lease_is_refused_and_nothing_is_written(reviewer, second_reviewer, item):
    first = claim(reviewer)
    Item.objects.filter(pk=item.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    second = claim(second_reviewer)

    with pytest.raises(LeaseLost):
        services.review_submit(
            item_id=item.pk, reviewer=reviewer, decision="approve", version=first.version, final_text="Mine."
        )
    services.review_submit(
        item_id=item.pk, reviewer=second_reviewer, decision="approve", version=second.version, final_text="Theirs."
    )

    item.refresh_from_db()
    assert item.final_text == "Theirs."
    assert list(Review.objects.values_list("reviewer__username", flat=True)) == [second_reviewer.username]


def test_scores_must_follow_the_rubric(reviewer, item):
    claimed = claim(reviewer)

    for scores in [{"charm": 3}, {"tone": 0}, {"tone": 6}, {"tone": "5"}, {"tone": True}]:
        with pytest.raises(InvalidInput):
            services.review_submit(
                item_id=item.pk, reviewer=reviewer, decision="approve", version=claimed.version, scores=scores
            )
    assert not Review.objects.exists()


def test_two_approvals_need_two_different_reviewers(db):
    domain = DomainFactory(approvals_required=2)
    first, second = reviewer_factory(domain), reviewer_factory(domain)
    item = ItemFactory(domain=domain)

    claimed = claim(first)
    services.review_submit(
        item_id=item.pk, reviewer=first, decision="approve", version=claimed.version, final_text="First pass."
    )

    item.refresh_from_db()
    assert (item.status, item.approvals, item.final_text) == (Item.Status.READY, 1, "First pass.")
    assert claim(first) is None, "the first approver must not get the item again"

    claimed = claim(second)
    assert claimed.pk == item.pk
    services.review_submit(item_id=item.pk, reviewer=second, decision="approve", version=claimed.version)

    item.refresh_from_db()
    assert (item.status, item.approvals, item.final_text) == (Item.Status.APPROVED, 2, "First pass.")
    assert Correction.objects.filter(item=item).count() == 2


def test_corrections_are_immutable(reviewer, item):
    claimed = claim(reviewer)
    review = services.review_submit(item_id=item.pk, reviewer=reviewer, decision="approve", version=claimed.version)
    correction = review.correction

    correction.final = "rewritten history"
    with pytest.raises(ValidationError):
        correction.save()
    with pytest.raises(ValidationError):
        correction.delete()
    assert Correction.objects.get(pk=correction.pk).final == item.draft


def test_corrections_and_audit_cannot_be_rewritten_in_bulk(reviewer, item):
    claimed = claim(reviewer)
    services.review_submit(item_id=item.pk, reviewer=reviewer, decision="approve", version=claimed.version)

    with pytest.raises(ValidationError):
        Correction.objects.update(final="rewritten")
    with pytest.raises(ValidationError):
        AuditEvent.objects.all().delete()
    assert Correction.objects.get().final == item.draft


def test_a_user_holding_a_lease_cannot_be_deleted(reviewer, item):
    from django.db.models import ProtectedError

    claim(reviewer)

    with pytest.raises(ProtectedError):
        reviewer.delete()


def test_a_review_names_the_draft_it_was_made_on(reviewer, item):
    draft = item.generations.get()
    claimed = claim(reviewer)

    review = services.review_submit(
        item_id=item.pk, reviewer=reviewer, decision="reject", version=claimed.version, reason="Off topic."
    )

    assert review.generation == draft


def test_time_spent_counts_from_the_previous_decision_when_the_next_item_was_claimed_earlier(reviewer, domain):
    first, second = ItemFactory(domain=domain), ItemFactory(domain=domain)
    now = timezone.now()
    claim(reviewer), claim(reviewer)  # the dashboard holds the next item while the first is reviewed
    Claim.objects.filter(item=first).update(claimed_at=now - timedelta(minutes=10))
    Claim.objects.filter(item=second).update(claimed_at=now - timedelta(minutes=9))
    first.refresh_from_db()
    services.review_submit(item_id=first.pk, reviewer=reviewer, decision="approve", version=first.version)
    Claim.objects.filter(item=first).update(ended_at=now - timedelta(minutes=2))

    second.refresh_from_db()
    review = services.review_submit(item_id=second.pk, reviewer=reviewer, decision="approve", version=second.version)

    assert 119_000 <= review.time_spent_ms <= 125_000  # two minutes since the first decision, not nine
    assert Review.objects.get(item=first).time_spent_ms >= 599_000  # the first: from its claim


def test_time_spent_after_a_skip_counts_from_the_skip(reviewer, domain):
    skipped, second = ItemFactory(domain=domain), ItemFactory(domain=domain)
    now = timezone.now()
    claim(reviewer), claim(reviewer)
    Claim.objects.filter(item__in=[skipped, second]).update(claimed_at=now - timedelta(minutes=10))
    services.item_release(item_id=skipped.pk, reviewer=reviewer, skip=True)
    Claim.objects.filter(item=skipped).update(ended_at=now - timedelta(minutes=1))

    second.refresh_from_db()
    review = services.review_submit(item_id=second.pk, reviewer=reviewer, decision="approve", version=second.version)

    assert 59_000 <= review.time_spent_ms <= 65_000
