"""The reviewer's home page: their domains with queue counts, their recent work."""

import pytest

from annotations import services
from annotations.models import Item
from tests.factories import DomainFactory, ItemFactory


def test_anonymous_visitors_are_asked_to_sign_in(client, db):
    page = client.get("/").content.decode()

    assert 'href="/accounts/login/"' in page
    assert 'id="domains"' not in page


def test_a_reviewer_sees_counts_for_their_domains_only(client, reviewer, second_reviewer, domain):
    ItemFactory.create_batch(3, domain=domain)
    ItemFactory(domain=domain, status=Item.Status.APPROVED)
    ItemFactory(domain=DomainFactory(slug="elsewhere"))  # not granted: not listed
    services.item_claim_next(reviewer=second_reviewer)
    client.force_login(reviewer)

    page = client.get("/").content.decode()

    row = page[page.index(f'data-domain="{domain.slug}"') :].split("</tr>")[0]
    link = f'<a href="/review/{domain.slug}/">{domain.name}</a>'  # the domain's queue on the review screen
    assert [cell.split("</td>")[0] for cell in row.split("<td>")[1:]] == [link, "2", "1", "1"]
    assert "elsewhere" not in page


def test_recent_work_lists_the_reviewers_own_decisions_newest_first(client, reviewer, domain):
    first, second = ItemFactory(domain=domain), ItemFactory(domain=domain)
    for item, text in ((first, None), (second, "An edited <b>reply</b>.")):
        claimed = services.item_claim_next(reviewer=reviewer)
        assert claimed.pk == item.pk
        services.review_submit(
            item_id=item.pk, reviewer=reviewer, decision="approve", version=claimed.version, final_text=text
        )
    client.force_login(reviewer)

    page = client.get("/").content.decode()

    recent = page[page.index('id="recent"') :]
    assert recent.index(f"Item {second.pk}") < recent.index(f"Item {first.pk}")
    assert "approve, edited" in recent.split(f"Item {first.pk}")[0]  # the second (newest) was edited
    assert f'href="/items/{second.pk}/"' in recent


@pytest.mark.parametrize("domains", [1, 5])
def test_the_page_costs_the_same_queries_for_any_number_of_domains(
    client, reviewer, domains, django_assert_max_num_queries
):
    for _ in range(domains):
        DomainFactory().reviewers.add(reviewer)
    client.force_login(reviewer)

    with django_assert_max_num_queries(8):
        assert client.get("/").status_code == 200


def test_signing_out_returns_to_the_home_page_signed_out(client, reviewer):
    client.force_login(reviewer)

    response = client.post("/accounts/logout/")

    assert (response.status_code, response["Location"]) == (302, "/")
    assert 'href="/accounts/login/"' in client.get("/").content.decode()
