"""No item is handed to two reviewers; no edit is lost. Real threads, real connections."""

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections

from annotations import services
from annotations.exceptions import Conflict
from annotations.models import Claim, Item, Review
from tests.factories import DomainFactory, reviewer_factory


def make_ready_items(domain, count: int) -> None:
    Item.objects.bulk_create(
        Item(domain=domain, status=Item.Status.READY, input=f"message {n}", draft=f"draft {n}", priority=n % 3)
        for n in range(count)
    )


def claim_until_empty(reviewers) -> list[tuple[int, int]]:
    """Every reviewer in its own thread claims until the queue is empty; returns (item, reviewer) pairs."""
    start = threading.Barrier(len(reviewers))

    def work(reviewer):
        claimed = []
        try:
            start.wait()
            while (item := services.item_claim_next(reviewer=reviewer)) is not None:
                claimed.append((item.pk, reviewer.pk))
        finally:
            connections.close_all()
        return claimed

    with ThreadPoolExecutor(max_workers=len(reviewers)) as pool:
        return [pair for result in pool.map(work, reviewers) for pair in result]


def assert_each_item_claimed_exactly_once(claims: list[tuple[int, int]], total: int) -> None:
    counts = Counter(item_id for item_id, _ in claims)
    assert len(counts) == total, "some items were never claimed"
    assert max(counts.values()) == 1, "an item was handed to two reviewers"
    assert Claim.objects.count() == total
    assert not Item.objects.exclude(status=Item.Status.IN_REVIEW).exists()


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_32_reviewers_claiming_2000_items_on_postgres_never_share_one():
    domain = DomainFactory()
    reviewers = [reviewer_factory(domain) for _ in range(32)]
    make_ready_items(domain, 2000)

    claims = claim_until_empty(reviewers)

    assert_each_item_claimed_exactly_once(claims, 2000)
    assert len({reviewer for _, reviewer in claims}) > 1, "the load was not shared"


@pytest.mark.sqlite
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_16_reviewers_claiming_on_the_sqlite_default_never_share_one():
    assert connection.vendor == "sqlite"
    domain = DomainFactory()
    reviewers = [reviewer_factory(domain) for _ in range(16)]
    make_ready_items(domain, 400)

    claims = claim_until_empty(reviewers)

    assert_each_item_claimed_exactly_once(claims, 400)


@pytest.mark.django_db(transaction=True)
def test_two_saves_of_the_same_version_one_wins_the_other_gets_409(api):
    """Two tabs of the claimant save the same version at once: one review, the winner's text kept."""
    domain = DomainFactory()
    reviewer = reviewer_factory(domain)
    make_ready_items(domain, 1)
    claimed = services.item_claim_next(reviewer=reviewer)
    texts = ["Text from tab one.", "Text from tab two."]
    start = threading.Barrier(2)

    def save(text):
        try:
            start.wait()
            return text, services.review_submit(
                item_id=claimed.pk, reviewer=reviewer, decision="approve", version=claimed.version, final_text=text
            )
        except Conflict as error:
            return text, error
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(save, texts))

    winners = [text for text, outcome in results if isinstance(outcome, Review)]
    losers = [outcome for _, outcome in results if isinstance(outcome, Conflict)]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0].status_code == 409
    item = Item.objects.get(pk=claimed.pk)
    assert item.final_text == winners[0]
    assert Review.objects.filter(item=item).count() == 1


def test_reviewer_who_lost_the_lease_gets_409_and_the_new_claimant_keeps_their_text(
    api, reviewer, second_reviewer, item
):
    # given reviewer A claimed, went quiet, and B took the item over
    version_a = api.as_user(reviewer).post("/api/v1/queue/claim/", {}, format="json").json()["version"]
    Item.objects.filter(pk=item.pk).update(lease_expires_at="2000-01-01T00:00:00Z")
    version_b = api.as_user(second_reviewer).post("/api/v1/queue/claim/", {}, format="json").json()["version"]

    # when both save
    saved_b = api.as_user(second_reviewer).post(
        f"/api/v1/items/{item.pk}/reviews/",
        {"decision": "approve", "version": version_b, "final_text": "B's careful edit."},
        format="json",
    )
    saved_a = api.as_user(reviewer).post(
        f"/api/v1/items/{item.pk}/reviews/",
        {"decision": "approve", "version": version_a, "final_text": "A's late edit."},
        format="json",
    )

    # then A is refused with 409 and B's text stands
    assert saved_b.status_code == 201
    assert saved_a.status_code == 409
    assert saved_a.json()["code"] == "lease_lost"
    assert Item.objects.get(pk=item.pk).final_text == "B's careful edit."
