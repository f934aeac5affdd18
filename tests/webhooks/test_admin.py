"""The webhook admin: a model manager subscribes a URL, reads its secret, sends a test, rotates the secret, turns a
disabled endpoint back on, reads every attempt of a delivery and redelivers it. Refusals are messages, not 500s;
an endpoint disabled for failing is shown on both lists; reviewers (not staff) never get in."""

import re

import pytest
from django.contrib.messages import get_messages
from django.core import mail
from django.urls import reverse
from standardwebhooks import Webhook

from annotations.models import AuditEvent
from webhooks import services
from webhooks.models import Delivery, Endpoint


@pytest.fixture
def staff_manager(manager):
    manager.is_staff = True
    manager.save()
    return manager


@pytest.fixture
def endpoint(receiver, manager):
    return services.endpoint_create(url=receiver.url, events=["item.approved"], user=manager, description="CRM")


def action(client, model: str, name: str, pks: list[int], **extra):
    url = reverse(f"admin:{model}_changelist")
    return client.post(url, {"action": name, "_selected_action": pks, **extra}, follow=True)


def texts(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def cells(html: str, field: str) -> list[str]:
    """The texts of one column of a tabular inline, top to bottom."""
    return re.findall(rf'<td class="field-{field}">\s*<p>(.*?)</p>', html, re.S)


def form_data(url: str, **changes) -> dict:
    return {"url": url, "events": ["item.approved"], "domains": [], "description": "", "is_active": "on", **changes}


def test_a_manager_subscribes_a_url_and_finds_its_secret_on_its_page(client, staff_manager, receiver, domain):
    client.force_login(staff_manager)

    response = client.post(
        reverse("admin:webhooks_endpoint_add"),
        form_data(receiver.url, events=["item.approved", "item.rejected"], domains=[domain.pk], description="CRM"),
        follow=True,
    )

    assert response.status_code == 200
    endpoint = Endpoint.objects.get()
    assert endpoint.events == ["item.approved", "item.rejected"] and list(endpoint.domains.all()) == [domain]
    assert endpoint.created_by == staff_manager and endpoint.secret.startswith("whsec_")
    assert any("signing secret" in text for text in texts(response))
    assert AuditEvent.objects.filter(verb="webhook.created", target_id=str(endpoint.pk)).exists()
    page = client.get(reverse("admin:webhooks_endpoint_change", args=[endpoint.pk]))
    assert page.status_code == 200 and endpoint.secret in page.content.decode()


def test_a_private_url_is_refused_with_a_form_error(client, staff_manager, settings):
    settings.SORA_WEBHOOK_ALLOW_PRIVATE = False
    client.force_login(staff_manager)

    response = client.post(reverse("admin:webhooks_endpoint_add"), form_data("http://127.0.0.1:8080/hooks"))

    assert response.status_code == 200
    assert "loopback, private" in str(response.context["adminform"].form.errors["url"])
    assert Endpoint.objects.count() == 0


def test_editing_an_endpoint_audits_what_it_was_and_keeps_its_failure_record(client, staff_manager, endpoint, receiver):
    Endpoint.objects.filter(pk=endpoint.pk).update(failing_since="2030-01-01T00:00:00Z")
    old_url = endpoint.url
    client.force_login(staff_manager)

    response = client.post(
        reverse("admin:webhooks_endpoint_change", args=[endpoint.pk]),
        form_data(old_url + "/v2", description="CRM, new path"),
    )

    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.url, endpoint.description) == (old_url + "/v2", "CRM, new path")
    assert endpoint.failing_since is not None  # only turning it back on clears that
    changed = AuditEvent.objects.get(verb="webhook.updated", target_id=str(endpoint.pk))
    assert (changed.before["url"], changed.after["url"]) == (old_url, old_url + "/v2")


def test_send_test_pings_the_receiver(client, staff_manager, endpoint, receiver, django_capture_on_commit_callbacks):
    client.force_login(staff_manager)

    with django_capture_on_commit_callbacks(execute=True):
        response = action(client, "webhooks_endpoint", "send_test", [endpoint.pk])

    assert response.status_code == 200 and any("Ping queued" in text for text in texts(response))
    [event] = receiver.verified(endpoint.secret)
    assert event["type"] == "ping" and event["data"]["endpoint_id"] == endpoint.pk
    assert Delivery.objects.get().status == "succeeded"


def test_rotate_secret_keeps_the_old_one_signing(
    client, staff_manager, endpoint, receiver, django_capture_on_commit_callbacks
):
    old = endpoint.secret
    client.force_login(staff_manager)

    response = action(client, "webhooks_endpoint", "rotate_secret", [endpoint.pk])

    assert any("New secret" in text for text in texts(response))
    endpoint.refresh_from_db()
    assert endpoint.secret != old and endpoint.previous_secret_expires_at is not None
    page = client.get(reverse("admin:webhooks_endpoint_change", args=[endpoint.pk])).content.decode()
    assert endpoint.secret in page and old not in page
    with django_capture_on_commit_callbacks(execute=True):
        action(client, "webhooks_endpoint", "send_test", [endpoint.pk])
    [request] = receiver.requests
    for secret in (old, endpoint.secret):
        Webhook(secret).verify(request["body"], request["headers"])


def test_an_endpoint_disabled_for_failing_is_shown_and_turned_back_on(
    client, staff_manager, endpoint, receiver, settings, django_capture_on_commit_callbacks
):
    settings.SORA_WEBHOOK_RETRY_SCHEDULE = []
    settings.SORA_WEBHOOK_DISABLE_AFTER_SECONDS = 0  # the first failure disables it
    settings.ADMINS = [("Ops", "ops@example.com")]
    healthy = services.endpoint_create(url=receiver.url + "/other", events=["item.approved"], user=None)
    receiver.default = 500
    client.force_login(staff_manager)
    with django_capture_on_commit_callbacks(execute=True):
        action(client, "webhooks_endpoint", "send_test", [endpoint.pk])
    endpoint.refresh_from_db()
    assert endpoint.is_active is False and endpoint.disabled_at is not None
    [told] = mail.outbox
    assert endpoint.url in told.subject and told.to == ["ops@example.com"]

    for model in ("webhooks_endpoint", "webhooks_delivery"):
        response = client.get(reverse(f"admin:{model}_changelist"))
        warnings = [m for m in get_messages(response.wsgi_request) if m.level_tag == "warning"]
        assert [endpoint.url in str(m) and "disabled" in str(m) for m in warnings] == [True], model

    # An action on another endpoint shows the warning once, not once per request.
    receiver.default = 200
    response = action(client, "webhooks_endpoint", "rotate_secret", [healthy.pk])
    assert sum("was disabled" in text for text in texts(response)) == 1

    response = action(client, "webhooks_endpoint", "turn_on", [endpoint.pk])

    assert any("is on" in text for text in texts(response))
    endpoint.refresh_from_db()
    assert (endpoint.is_active, endpoint.disabled_at, endpoint.failing_since) == (True, None, None)
    listing = client.get(reverse("admin:webhooks_endpoint_changelist"))
    assert not any("was disabled" in str(m) for m in get_messages(listing.wsgi_request))


def test_the_delivery_page_shows_every_attempt_and_is_read_only(
    client, staff_manager, endpoint, receiver, settings, django_capture_on_commit_callbacks
):
    settings.SORA_WEBHOOK_RETRY_SCHEDULE = []
    receiver.default = 500
    receiver.answer_body = b"receiver exploded"
    with django_capture_on_commit_callbacks(execute=True):
        delivery = services.endpoint_ping(endpoint=endpoint, user=None)
    receiver.stop()  # nobody listens any more: the next attempt gets no answer
    with django_capture_on_commit_callbacks(execute=True):
        services.delivery_redeliver(delivery_id=delivery.pk, user=None)
    client.force_login(staff_manager)
    change_url = reverse("admin:webhooks_delivery_change", args=[delivery.pk])

    page = client.get(change_url)

    assert page.status_code == 200
    html = page.content.decode()
    assert delivery.message_id in html
    assert cells(html, "number") == ["1", "2"] and cells(html, "status_code") == ["500", "-"]
    assert cells(html, "response_body") == ["receiver exploded", "-"]
    assert cells(html, "error")[0] == "-" and "ConnectError" in cells(html, "error")[1]  # nobody answered
    assert 'name="_save"' not in html and 'name="body"' not in html
    assert client.post(change_url, {"body": "{}"}).status_code == 403
    listing = client.get(reverse("admin:webhooks_delivery_changelist")).content.decode()
    assert change_url in listing
    endpoint_page = client.get(reverse("admin:webhooks_endpoint_change", args=[endpoint.pk])).content.decode()
    assert change_url in endpoint_page  # its recent deliveries


def test_redeliver_sends_the_same_webhook_id_and_a_refusal_is_a_message(
    client, staff_manager, endpoint, receiver, settings, django_capture_on_commit_callbacks
):
    settings.SORA_WEBHOOK_RETRY_SCHEDULE = []
    receiver.default = 500
    with django_capture_on_commit_callbacks(execute=True):
        delivery = services.endpoint_ping(endpoint=endpoint, user=None)
    receiver.default = 200
    client.force_login(staff_manager)

    with django_capture_on_commit_callbacks(execute=True):
        response = action(client, "webhooks_delivery", "redeliver", [delivery.pk])

    assert any("queued again" in text for text in texts(response))
    assert receiver.webhook_ids() == [delivery.message_id] * 2
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)

    services.endpoint_update(endpoint=endpoint, user=None, is_active=False)
    with django_capture_on_commit_callbacks(execute=True):
        refused = action(client, "webhooks_delivery", "redeliver", [delivery.pk])

    assert refused.status_code == 200
    assert any("turn it on first" in text for text in texts(refused))
    assert len(receiver.requests) == 2


def test_deleting_endpoints_from_the_list_is_audited(client, staff_manager, endpoint, receiver):
    other = services.endpoint_create(url=receiver.url + "/other", events=["item.approved"], user=None)
    client.force_login(staff_manager)

    response = action(client, "webhooks_endpoint", "delete_selected", [endpoint.pk, other.pk], post="yes")

    assert response.status_code == 200 and Endpoint.objects.count() == 0
    deleted = AuditEvent.objects.filter(verb="webhook.deleted", actor=staff_manager)
    assert sorted(deleted.values_list("target_id", flat=True)) == sorted([str(endpoint.pk), str(other.pk)])


def test_reviewers_never_reach_the_webhook_admin(client, reviewer, manager, endpoint):
    for user in (reviewer, manager):  # the manager is not staff here
        client.force_login(user)
        for name in ("webhooks_endpoint_changelist", "webhooks_delivery_changelist"):
            assert client.get(reverse(f"admin:{name}")).status_code == 302
        assert client.get(reverse("admin:webhooks_endpoint_change", args=[endpoint.pk])).status_code == 302
