from datetime import timedelta

import pytest
from django.utils import timezone

from annotations import roles, services
from annotations.exceptions import InvalidInput, LeaseLost, NotAllowed
from annotations.models import AuditEvent, Claim, Item
from tests.factories import DomainFactory, ItemFactory, reviewer_factory


def expire_lease(item: Item) -> None:
    past = timezone.now() - timedelta(seconds=1)
    Item.objects.filter(pk=item.pk).update(lease_expires_at=past)
    Claim.objects.filter(item=item, ended_at__isnull=True).update(lease_expires_at=past)


def test_claim_takes_highest_priority_then_oldest(reviewer, domain):
    old = ItemFactory(domain=domain)
    urgent = ItemFactory(domain=domain, priority=5)
    newer = ItemFactory(domain=domain)

    order = [services.item_claim_next(reviewer=reviewer).pk for _ in range(3)]

    assert order == [urgent.pk, old.pk, newer.pk]
    assert services.item_claim_next(reviewer=reviewer) is None


def test_claim_leases_the_item_and_records_it(reviewer, item):
    claimed = services.item_claim_next(reviewer=reviewer)

    assert claimed.pk == item.pk
    assert claimed.status == Item.Status.IN_REVIEW
    assert claimed.lease_owner == reviewer
    assert claimed.lease_expires_at > timezone.now()
    assert claimed.version == item.version + 1
    claim = Claim.objects.get(item=item)
    assert (claim.reviewer, claim.ended_at) == (reviewer, None)
    assert AuditEvent.objects.filter(verb="item.claimed", target_id=str(item.pk), actor=reviewer).exists()


def test_claim_only_from_granted_domains(reviewer, domain):
    other = DomainFactory()
    ItemFactory(domain=other)

    assert services.item_claim_next(reviewer=reviewer) is None
    with pytest.raises(NotAllowed):
        services.item_claim_next(reviewer=reviewer, domain=other.slug)
    with pytest.raises(InvalidInput):
        services.item_claim_next(reviewer=reviewer, domain="no_such_domain")


def test_claim_filtered_by_domain(domain):
    other = DomainFactory()
    reviewer = reviewer_factory(domain, other)
    ItemFactory(domain=domain)
    wanted = ItemFactory(domain=other)

    assert services.item_claim_next(reviewer=reviewer, domain=other.slug).pk == wanted.pk


def test_user_without_domains_may_not_claim(db):
    with pytest.raises(NotAllowed):
        services.item_claim_next(reviewer=reviewer_factory())


def test_items_not_ready_are_never_claimed(reviewer, domain):
    for status in ["queued", "generating", "approved", "rejected", "failed"]:
        ItemFactory(domain=domain, status=status)

    assert services.item_claim_next(reviewer=reviewer) is None


def test_expired_lease_is_reclaimed_by_another_reviewer(reviewer, second_reviewer, item):
    services.item_claim_next(reviewer=reviewer)
    expire_lease(item)

    reclaimed = services.item_claim_next(reviewer=second_reviewer)

    assert reclaimed.pk == item.pk
    assert reclaimed.lease_owner == second_reviewer
    first, second = Claim.objects.filter(item=item).order_by("claimed_at")
    assert first.end_reason == Claim.EndReason.EXPIRED
    assert second.ended_at is None
    assert AuditEvent.objects.filter(verb="item.lease_expired", target_id=str(item.pk)).exists()


def test_live_lease_is_not_reclaimed(reviewer, second_reviewer, item):
    services.item_claim_next(reviewer=reviewer)

    assert services.item_claim_next(reviewer=second_reviewer) is None


def test_periodic_expiry_returns_items_to_the_queue(reviewer, item):
    services.item_claim_next(reviewer=reviewer)
    expire_lease(item)

    assert services.leases_expire() == 1

    item.refresh_from_db()
    assert (item.status, item.lease_owner) == (Item.Status.READY, None)


def test_heartbeat_extends_the_lease_without_a_new_version(reviewer, item):
    claimed = services.item_claim_next(reviewer=reviewer)
    Item.objects.filter(pk=item.pk).update(lease_expires_at=timezone.now() + timedelta(seconds=5))

    beaten = services.item_heartbeat(item_id=item.pk, reviewer=reviewer)

    assert beaten.lease_expires_at > timezone.now() + timedelta(seconds=60)
    assert beaten.version == claimed.version
    assert Claim.objects.get(item=item).lease_expires_at == beaten.lease_expires_at


def test_heartbeat_after_the_lease_expired_is_refused(reviewer, item):
    services.item_claim_next(reviewer=reviewer)
    expire_lease(item)

    with pytest.raises(LeaseLost):
        services.item_heartbeat(item_id=item.pk, reviewer=reviewer)


def test_only_the_claimant_may_heartbeat_or_release(reviewer, second_reviewer, item):
    services.item_claim_next(reviewer=reviewer)

    with pytest.raises(LeaseLost):
        services.item_heartbeat(item_id=item.pk, reviewer=second_reviewer)
    with pytest.raises(LeaseLost):
        services.item_release(item_id=item.pk, reviewer=second_reviewer)


def test_release_returns_the_item_to_the_queue(reviewer, second_reviewer, item):
    services.item_claim_next(reviewer=reviewer)

    released = services.item_release(item_id=item.pk, reviewer=reviewer)

    assert (released.status, released.lease_owner) == (Item.Status.READY, None)
    assert Claim.objects.get(item=item).end_reason == Claim.EndReason.RELEASED
    assert services.item_claim_next(reviewer=second_reviewer).pk == item.pk


def test_a_skipped_item_goes_to_the_others_first(reviewer, second_reviewer, domain):
    skipped, other = ItemFactory(domain=domain, priority=1), ItemFactory(domain=domain)
    assert services.item_claim_next(reviewer=reviewer).pk == skipped.pk

    services.item_release(item_id=skipped.pk, reviewer=reviewer, skip=True)

    assert services.item_claim_next(reviewer=reviewer).pk == other.pk  # passed over, though more urgent
    assert services.item_claim_next(reviewer=second_reviewer).pk == skipped.pk
    assert Claim.objects.filter(item=skipped, reviewer=reviewer).get().end_reason == "skipped"
    assert AuditEvent.objects.filter(verb="item.skipped", target_id=str(skipped.pk), actor=reviewer).exists()


def test_a_skipped_item_comes_back_to_the_skipper_when_nothing_else_is_left(reviewer, domain):
    skipped, other = ItemFactory(domain=domain, priority=1), ItemFactory(domain=domain)
    services.item_claim_next(reviewer=reviewer)
    services.item_release(item_id=skipped.pk, reviewer=reviewer, skip=True)

    order = [services.item_claim_next(reviewer=reviewer) for _ in range(3)]

    assert [claimed and claimed.pk for claimed in order] == [other.pk, skipped.pk, None]


def test_a_plain_release_may_come_back_to_the_same_reviewer(reviewer, item):
    services.item_claim_next(reviewer=reviewer)
    services.item_release(item_id=item.pk, reviewer=reviewer)

    assert services.item_claim_next(reviewer=reviewer).pk == item.pk


def test_an_expired_urgent_item_comes_before_a_ready_ordinary_one(reviewer, second_reviewer, domain):
    urgent = ItemFactory(domain=domain, priority=5)
    services.item_claim_next(reviewer=reviewer)
    expire_lease(urgent)
    ItemFactory(domain=domain, priority=0)

    assert services.item_claim_next(reviewer=second_reviewer).pk == urgent.pk


def test_claim_and_expiry_audit_the_same_state_on_every_database(reviewer, second_reviewer, item):
    first = services.item_claim_next(reviewer=reviewer)
    expire_lease(item)
    second = services.item_claim_next(reviewer=second_reviewer)

    events = {e.verb: e for e in AuditEvent.objects.filter(target_id=str(item.pk))}
    state = {"approvals": 0}
    assert events["item.lease_expired"].before == {
        **state,
        "status": "in_review",
        "version": first.version,
        "lease_owner": reviewer.pk,
    }
    assert events["item.lease_expired"].after == {
        **state,
        "status": "ready",
        "version": first.version + 1,
        "lease_owner": None,
    }
    claims = AuditEvent.objects.filter(verb="item.claimed", target_id=str(item.pk)).order_by("id")
    assert [e.after for e in claims] == [
        {**state, "status": "in_review", "version": first.version, "lease_owner": reviewer.pk},
        {**state, "status": "in_review", "version": second.version, "lease_owner": second_reviewer.pk},
    ]
    assert claims[1].before == {**state, "status": "ready", "version": second.version - 1, "lease_owner": None}


@pytest.mark.postgres
def test_a_claim_is_one_statement_after_the_domain_query_unless_leases_expired(
    reviewer, second_reviewer, domain, django_assert_num_queries
):
    first, second = ItemFactory(domain=domain), ItemFactory(domain=domain)
    for user in (reviewer, second_reviewer):
        roles.user_roles(user)  # the API's permission check has already loaded them

    with django_assert_num_queries(2):  # the reviewer's domains, then the lease
        services.item_claim_next(reviewer=reviewer)
    expire_lease(first)
    with django_assert_num_queries(5) as queries:  # + the sweep, in a transaction (a savepoint under the test's)
        claimed = services.item_claim_next(reviewer=second_reviewer)

    assert "expired" in queries.captured_queries[2]["sql"]
    assert claimed.pk == first.pk
    assert Item.objects.get(pk=second.pk).status == Item.Status.READY
