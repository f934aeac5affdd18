"""The review screen's pages: sign-in, permission, starting data, text never rendered as HTML.

What the page then does is tested in real Chromium (tests/browser/test_review.py)."""

import json
import re

from tests.factories import DomainFactory, ItemFactory, reviewer_factory


def starting_data(page: str) -> dict:
    """The page's JSON data block: json_script escapes <, > and &, so no text inside can end the block."""
    return json.loads(re.search(r'<script id="boot" type="application/json">(.*?)</script>', page, re.S).group(1))


HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)"><a href="javascript:alert(3)">x</a>'


def test_the_page_asks_for_a_sign_in_first(client, item):
    response = client.get(f"/items/{item.pk}/")

    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next=/items/{item.pk}/"
    assert client.get("/accounts/login/").status_code == 200


def test_a_reviewer_signs_in_and_sees_the_item_with_the_review_script(client, reviewer, item):
    response = client.post(
        "/accounts/login/",
        {"username": reviewer.username, "password": "pass-for-tests-123", "next": f"/items/{item.pk}/"},
    )
    assert response.status_code == 302 and response["Location"] == f"/items/{item.pk}/"

    response = client.get(f"/items/{item.pk}/")
    page = response.content.decode()
    assert 'src="/static/js/review.js"' in page
    assert "<script>" not in page.replace('<script type="module"', "")  # no inline script
    boot = starting_data(page)
    assert boot["mode"] == "item" and boot["user"] == "rita" and boot["may_review"] is True
    assert [shown["id"] for shown in boot["items"]] == [item.pk]


def test_model_output_and_input_are_shown_as_text(client, domain, reviewer):
    item = ItemFactory(domain=domain, input=HOSTILE, draft=HOSTILE)
    client.force_login(reviewer)

    page = client.get(f"/items/{item.pk}/").content.decode()

    assert HOSTILE not in page
    # Only inside the JSON data block, where json_script escapes <, > and &: the script sets it as text.
    assert starting_data(page)["items"][0]["draft"] == HOSTILE


def test_someone_without_access_to_the_domain_gets_a_404(client, item):
    client.force_login(reviewer_factory(DomainFactory()))

    assert client.get(f"/items/{item.pk}/").status_code == 404
    assert client.get("/items/999999999999999999/").status_code == 404


def test_the_queue_page_resumes_the_items_the_reviewer_already_holds(client, reviewer, domain):
    from annotations.services import item_claim_next

    first, second, _ = (ItemFactory(domain=domain) for _ in range(3))
    claimed = [item_claim_next(reviewer=reviewer).pk, item_claim_next(reviewer=reviewer).pk]
    client.force_login(reviewer)

    boot = starting_data(client.get(f"/review/{domain.slug}/").content.decode())

    assert boot["mode"] == "queue" and boot["domain"]["slug"] == domain.slug
    assert [held["id"] for held in boot["items"]] == claimed


def test_the_queue_page_of_a_domain_you_do_not_review_is_a_404(client, reviewer, domain):
    other = DomainFactory()
    client.force_login(reviewer)

    assert client.get(f"/review/{other.slug}/").status_code == 404
    assert client.get("/review/no-such-domain/").status_code == 404
    client.logout()
    assert client.get(f"/review/{domain.slug}/")["Location"] == f"/accounts/login/?next=/review/{domain.slug}/"


def test_a_manager_may_open_an_item_read_only_but_not_work_a_queue(client, manager, item):
    client.force_login(manager)

    boot = starting_data(client.get(f"/items/{item.pk}/").content.decode())

    assert boot["may_review"] is False and boot["may_generate"] is True
    assert client.get(f"/review/{item.domain.slug}/").status_code == 404


def test_the_api_refuses_a_session_post_without_the_csrf_token(reviewer, item):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(reviewer)

    response = browser.post("/api/v1/queue/claim/", {}, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]

    page = browser.get(f"/items/{item.pk}/").content.decode()
    token = re.search(r'id="csrf" value="([^"]+)"', page).group(1)  # what the page's script sends
    response = browser.post("/api/v1/queue/claim/", {}, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200
