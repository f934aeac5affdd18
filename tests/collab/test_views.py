"""The live item page: sign-in, permission, text never rendered as HTML."""

from tests.factories import DomainFactory, ItemFactory, reviewer_factory

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)"><a href="javascript:alert(3)">x</a>'


def test_the_page_asks_for_a_sign_in_first(client, item):
    response = client.get(f"/items/{item.pk}/")

    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next=/items/{item.pk}/"
    assert client.get("/accounts/login/").status_code == 200


def test_a_reviewer_signs_in_and_sees_the_item_with_its_live_script(client, reviewer, item):
    response = client.post(
        "/accounts/login/",
        {"username": reviewer.username, "password": "pass-for-tests-123", "next": f"/items/{item.pk}/"},
    )
    assert response.status_code == 302 and response["Location"] == f"/items/{item.pk}/"

    page = client.get(f"/items/{item.pk}/").content.decode()
    assert f'data-item-id="{item.pk}"' in page
    assert 'src="/static/js/item_live.js"' in page
    assert "<script>" not in page.replace('<script type="module"', "")  # no inline script


def test_model_output_and_input_are_shown_as_text(client, domain, reviewer):
    item = ItemFactory(domain=domain, input=HOSTILE, draft=HOSTILE)
    client.force_login(reviewer)

    page = client.get(f"/items/{item.pk}/").content.decode()

    assert HOSTILE not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 2


def test_someone_without_access_to_the_domain_gets_a_404(client, item):
    client.force_login(reviewer_factory(DomainFactory()))

    assert client.get(f"/items/{item.pk}/").status_code == 404
    assert client.get("/items/999999999999999999/").status_code == 404
