"""Data migrations, run against rows made by today's services."""

import importlib

import pytest
from django.apps import apps

from annotations import services
from annotations.models import Review
from tests.factories import ItemFactory

migration = importlib.import_module("annotations.migrations.0009_review_generation")


@pytest.mark.django_db
def test_earlier_reviews_are_linked_to_the_draft_they_were_made_on(reviewer, domain):
    items = [ItemFactory(domain=domain) for _ in range(2)]
    for it in items:
        c = services.item_claim_next(reviewer=reviewer)
        services.review_submit(
            item_id=c.pk,
            reviewer=reviewer,
            decision="approve" if it is items[0] else "reject",
            version=c.version,
            reason="x",
        )
    expected = dict(Review.objects.values_list("pk", "generation"))
    Review.objects.update(generation=None)
    migration.link_reviews_to_their_drafts(apps, None)
    assert dict(Review.objects.values_list("pk", "generation")) == expected
    assert all(expected.values())
