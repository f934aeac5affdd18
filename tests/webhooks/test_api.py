"""The webhook API (PRODUCT.md §5, §7): managers and admins subscribe URLs, rotate secrets, send a test, read the
delivery log and redeliver; reviewers and integrations may do none of it. The receiver is a real HTTP server on
loopback, and it checks every signature with the `standardwebhooks` library, as a real receiver would."""

from datetime import timedelta

import pytest
from django.utils import dateparse, timezone
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from annotations.models import AuditEvent
from webhooks import services
from webhooks.models import Delivery, Endpoint

HUGE_ID = "999999999999999999999"


@pytest.fixture
def create(api, manager, receiver):
    """create(**changes): subscribe the receiver through the API as the manager; the 201 answer's JSON."""

    def _create(**changes):
        body = {"url": receiver.url, "events": ["item.approved"], "description": "CRM", **changes}
        response = api.as_user(manager).post("/api/v1/webhooks/", body, format="json")
        assert response.status_code == 201, response.json()
        return response.json()

    return _create


@pytest.fixture
def endpoint_and_delivery(manager, receiver):
    endpoint = services.endpoint_create(url=receiver.url, events=["item.approved"], user=manager)
    delivery = services.endpoint_ping(endpoint=endpoint, user=manager)  # not sent: no on_commit in these tests
    return endpoint, delivery


ROUTES = [
    ("get", "/api/v1/webhooks/", None),
    ("post", "/api/v1/webhooks/", {"url": "http://127.0.0.1:9/x", "events": ["item.approved"]}),
    ("get", "/api/v1/webhooks/{endpoint}/", None),
    ("patch", "/api/v1/webhooks/{endpoint}/", {"description": "changed", "is_active": False}),
    ("post", "/api/v1/webhooks/{endpoint}/rotate-secret/", None),
    ("post", "/api/v1/webhooks/{endpoint}/test/", None),
    ("get", "/api/v1/webhooks/{endpoint}/deliveries/", None),
    ("get", "/api/v1/deliveries/{delivery}/", None),
    ("post", "/api/v1/deliveries/{delivery}/redeliver/", None),
    ("delete", "/api/v1/webhooks/{endpoint}/", None),
]


def _call(api, method, path, body, endpoint, delivery):
    return getattr(api, method)(path.format(endpoint=endpoint.pk, delivery=delivery.pk), body, format="json")


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_reviewers_and_integrations_may_not_touch_webhooks(
    api, reviewer, integration, endpoint_and_delivery, method, path, body
):
    endpoint, delivery = endpoint_and_delivery
    for user in (reviewer, integration):
        response = _call(api.as_user(user), method, path, body, endpoint, delivery)
        assert response.status_code == 403, (user, response.json())
    api.credentials()
    assert _call(api, method, path, body, endpoint, delivery).status_code == 401

    # Nothing happened.
    assert list(Endpoint.objects.values_list("pk", "secret", "is_active", "description")) == [
        (endpoint.pk, endpoint.secret, True, "")
    ]
    assert list(Delivery.objects.values_list("pk", "status", "attempts")) == [(delivery.pk, "pending", 0)]


@pytest.mark.parametrize("who", ["manager", "admin_user"])
def test_a_manager_and_an_admin_may_use_every_route(api, who, request, endpoint_and_delivery):
    endpoint, delivery = endpoint_and_delivery
    api.as_user(request.getfixturevalue(who))
    expected = [200, 201, 200, 200, 200, 409, 200, 200, 409, 204]  # test, redeliver: the PATCH turned it off

    got = [_call(api, method, path, body, endpoint, delivery).status_code for method, path, body in ROUTES]

    assert got == expected
    assert not Endpoint.objects.filter(pk=endpoint.pk).exists()


def test_create_shows_the_secret_once(api, manager, domain, create):
    created = create(events=["item.rejected", "item.approved"], domains=[domain.slug])

    assert created["secret"].startswith("whsec_")
    Webhook(created["secret"])  # a secret the receiver's library accepts
    assert created["events"] == ["item.approved", "item.rejected"] and created["domains"] == [domain.slug]
    assert created["is_active"] is True and created["description"] == "CRM"
    endpoint = Endpoint.objects.get()
    assert endpoint.secret == created["secret"] and endpoint.created_by == manager
    assert AuditEvent.objects.filter(verb="webhook.created", target_id=str(endpoint.pk), actor=manager).exists()

    listed = api.get("/api/v1/webhooks/").json()
    detail = api.get(f"/api/v1/webhooks/{created['id']}/")
    patched = api.patch(f"/api/v1/webhooks/{created['id']}/", {"description": "x"}, format="json")
    assert listed["count"] == 1 and listed["results"][0]["id"] == created["id"]
    for shown in (listed["results"][0], detail.json(), patched.json()):
        assert "secret" not in shown and shown["id"] == created["id"]
    for response in (detail, patched):
        assert created["secret"].removeprefix("whsec_") not in response.content.decode()


def test_after_a_rotation_both_secrets_verify_until_the_overlap_ends(
    api, create, receiver, settings, django_capture_on_commit_callbacks
):
    settings.SORA_WEBHOOK_ROTATION_OVERLAP_SECONDS = 3600
    created = create()
    old = created["secret"]

    rotated = api.post(f"/api/v1/webhooks/{created['id']}/rotate-secret/")

    assert rotated.status_code == 200, rotated.json()
    new = rotated.json()["secret"]
    assert new.startswith("whsec_") and new != old
    expires = dateparse.parse_datetime(rotated.json()["previous_secret_expires_at"])
    assert abs(expires - (timezone.now() + timedelta(hours=1))) < timedelta(minutes=1)
    assert "secret" not in api.get(f"/api/v1/webhooks/{created['id']}/").json()

    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(f"/api/v1/webhooks/{created['id']}/test/").status_code == 202
    [request] = receiver.requests
    for secret in (old, new):  # the receiver may switch to the new secret whenever it likes
        assert Webhook(secret).verify(request["body"], request["headers"])["type"] == "ping"

    # Once the overlap is over, only the new secret signs.
    Endpoint.objects.filter(pk=created["id"]).update(previous_secret_expires_at=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"/api/v1/webhooks/{created['id']}/test/")
    later = receiver.requests[1]
    assert Webhook(new).verify(later["body"], later["headers"])["type"] == "ping"
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(later["body"], later["headers"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"url": "ftp://127.0.0.1/hooks"}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": ""}, "url"),
        ({"url": 7}, "url"),
        ({"url": None}, "url"),
        ({"url": "http://[::1/hooks"}, "url"),
        ({"url": "http://127.0.0.1:99999/hooks"}, "url"),
        ({"url": "http://user:password@127.0.0.1/hooks"}, "url"),
        ({"url": "http://no-such-host.invalid/hooks"}, "url"),
        ({"events": []}, "events"),
        ({"events": None}, "events"),
        ({"events": "item.approved"}, "events"),
        ({"events": ["item.deleted"]}, "events"),
        ({"events": ["item.approved", "item.deleted"]}, "events"),
        ({"events": ["ping"]}, "events"),  # sent by the test button, never subscribed to
        ({"events": [1]}, "events"),
        ({"domains": ["no-such-domain"]}, "domains"),
        ({"domains": "customer_service"}, "domains"),
        ({"domains": [7]}, "domains"),
        ({"description": 7}, "description"),
        ({"description": "x" * 501}, "description"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(api, manager, receiver, change, field):
    body = {"url": receiver.url, "events": ["item.approved"], **change}

    response = api.as_user(manager).post("/api/v1/webhooks/", body, format="json")

    assert response.status_code == 400, response.json()
    assert list(response.json()["errors"]) == [field]
    assert Endpoint.objects.count() == 0 and AuditEvent.objects.filter(verb__startswith="webhook.").count() == 0


@pytest.mark.parametrize("missing", ["url", "events"])
def test_url_and_events_are_required(api, manager, receiver, missing):
    body = {"url": receiver.url, "events": ["item.approved"]}
    del body[missing]

    response = api.as_user(manager).post("/api/v1/webhooks/", body, format="json")

    assert response.status_code == 400 and list(response.json()["errors"]) == [missing]
    assert Endpoint.objects.count() == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hooks",
        "http://localhost/hooks",
        "http://10.1.2.3/hooks",
        "http://192.168.0.10/hooks",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata: link-local
        "http://[::1]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://0.0.0.0/hooks",
    ],
)
def test_private_addresses_are_refused_unless_allowed(api, manager, settings, url):
    settings.SORA_WEBHOOK_ALLOW_PRIVATE = False

    response = api.as_user(manager).post("/api/v1/webhooks/", {"url": url, "events": ["item.approved"]}, format="json")

    assert response.status_code == 400 and "private" in response.json()["errors"]["url"][0]
    assert Endpoint.objects.count() == 0


def test_a_public_address_is_accepted_and_a_change_to_a_private_one_is_not(api, manager, settings):
    settings.SORA_WEBHOOK_ALLOW_PRIVATE = False
    api.as_user(manager)
    public = "https://93.184.215.14/hooks"  # an address literal: no DNS needed

    created = api.post("/api/v1/webhooks/", {"url": public, "events": ["item.approved"]}, format="json")
    assert created.status_code == 201, created.json()
    response = api.patch(f"/api/v1/webhooks/{created.json()['id']}/", {"url": "http://10.0.0.1/"}, format="json")

    assert response.status_code == 400 and list(response.json()["errors"]) == ["url"]
    assert Endpoint.objects.get().url == public


def test_plain_http_is_refused_when_https_is_required(api, manager, settings):
    settings.SORA_WEBHOOK_REQUIRE_HTTPS = True
    api.as_user(manager)

    refused = api.post(
        "/api/v1/webhooks/", {"url": "http://127.0.0.1/hooks", "events": ["item.approved"]}, format="json"
    )
    accepted = api.post(
        "/api/v1/webhooks/", {"url": "https://127.0.0.1/hooks", "events": ["item.approved"]}, format="json"
    )

    assert refused.status_code == 400 and "https://" in refused.json()["errors"]["url"][0]
    assert accepted.status_code == 201
    assert list(Endpoint.objects.values_list("url", flat=True)) == ["https://127.0.0.1/hooks"]


def test_patch_changes_what_it_names_and_nothing_else(api, create, domain, receiver):
    created = create(events=["item.approved"])
    path = f"/api/v1/webhooks/{created['id']}/"

    response = api.patch(
        path,
        {"events": ["item.rejected"], "domains": [domain.slug], "description": "Support CRM", "is_active": False},
        format="json",
    )

    assert response.status_code == 200, response.json()
    shown = api.get(path).json()
    assert shown == response.json()
    assert (shown["events"], shown["domains"], shown["description"], shown["is_active"]) == (
        ["item.rejected"],
        [domain.slug],
        "Support CRM",
        False,
    )
    assert shown["url"] == receiver.url and Endpoint.objects.get().secret == created["secret"]

    assert api.patch(path, {"domains": [], "is_active": True}, format="json").status_code == 200
    shown = api.get(path).json()
    assert (shown["domains"], shown["is_active"], shown["events"]) == ([], True, ["item.rejected"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"events": []}, "events"),
        ({"events": ["item.deleted"]}, "events"),
        ({"domains": ["no-such-domain"]}, "domains"),
        ({"url": "gopher://127.0.0.1/"}, "url"),
        ({"url": "http://[::1/hooks"}, "url"),
        ({"is_active": "perhaps"}, "is_active"),
        ({"description": ["a list"]}, "description"),
    ],
)
def test_a_bad_patch_names_the_field_and_changes_nothing(api, create, change, field):
    created = create()
    path = f"/api/v1/webhooks/{created['id']}/"
    before = api.get(path).json()

    response = api.patch(path, change, format="json")

    assert response.status_code == 400 and list(response.json()["errors"]) == [field]
    assert api.get(path).json() == before


def test_delete_then_every_route_of_it_is_a_404(api, create, django_capture_on_commit_callbacks):
    created = create()
    with django_capture_on_commit_callbacks(execute=True):
        delivery = api.post(f"/api/v1/webhooks/{created['id']}/test/").json()

    assert api.delete(f"/api/v1/webhooks/{created['id']}/").status_code == 204

    assert Endpoint.objects.count() == 0 and Delivery.objects.count() == 0
    for method, path, body in ROUTES[2:]:
        path = path.format(endpoint=created["id"], delivery=delivery["id"])
        response = getattr(api, method)(path, body, format="json")
        assert response.status_code == 404 and response.json()["code"] == "not_found", path


@pytest.mark.parametrize("missing_id", ["999999", HUGE_ID])
def test_unknown_ids_are_a_404(api, manager, endpoint_and_delivery, missing_id):
    api.as_user(manager)
    for method, path, body in ROUTES[2:]:
        response = getattr(api, method)(path.format(endpoint=missing_id, delivery=missing_id), body, format="json")
        assert response.status_code == 404 and response.json()["code"] == "not_found", path
    assert Endpoint.objects.count() == 1 and Delivery.objects.count() == 1


def test_the_test_button_pings_the_receiver_and_the_log_shows_the_answer(
    api, create, receiver, settings, django_capture_on_commit_callbacks
):
    settings.SORA_WEBHOOK_LOG_BYTES = 100
    receiver.answer_body = b"thanks! " + b"x" * 5000
    created = create(events=["item.rejected"])  # a ping goes out whatever the endpoint subscribes to

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/api/v1/webhooks/{created['id']}/test/")

    assert response.status_code == 202, response.json()
    [event] = receiver.verified(created["secret"])
    assert event["type"] == "ping" and event["data"]["endpoint_id"] == created["id"]
    assert receiver.webhook_ids() == [response.json()["webhook_id"]]

    log = api.get(f"/api/v1/webhooks/{created['id']}/deliveries/").json()
    assert log["count"] == 1
    [delivery] = log["results"]
    assert (delivery["event_type"], delivery["status"], delivery["attempts"]) == ("ping", "succeeded", 1)
    assert delivery["last_status_code"] == 200 and delivery["delivered_at"]
    [attempt] = delivery["attempt_log"]
    assert attempt["number"] == 1 and attempt["status_code"] == 200 and attempt["error"] == ""
    assert isinstance(attempt["latency_ms"], int) and attempt["latency_ms"] >= 0
    assert attempt["response_body"] == ("thanks! " + "x" * 5000)[:100]
    assert api.get(f"/api/v1/deliveries/{delivery['id']}/").json() == delivery


def test_the_log_filters_by_status_and_event(
    api, create, receiver, item, approve, settings, django_capture_on_commit_callbacks
):
    settings.SORA_WEBHOOK_RETRY_SCHEDULE = []
    created = create()
    path = f"/api/v1/webhooks/{created['id']}/deliveries/"
    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"/api/v1/webhooks/{created['id']}/test/")  # succeeds
    receiver.default = 500
    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"/api/v1/webhooks/{created['id']}/test/")  # fails
    with django_capture_on_commit_callbacks(execute=True):
        approve(item)  # fails

    def shown(query):
        response = api.get(path + query)
        assert response.status_code == 200, response.json()
        return [(d["event_type"], d["status"]) for d in response.json()["results"]]

    assert shown("") == [("item.approved", "failed"), ("ping", "failed"), ("ping", "succeeded")]  # newest first
    assert shown("?status=failed") == [("item.approved", "failed"), ("ping", "failed")]
    assert shown("?event=ping") == [("ping", "failed"), ("ping", "succeeded")]
    assert shown("?status=succeeded&event=ping") == [("ping", "succeeded")]
    assert shown("?status=pending") == []
    for query, field in [("?status=lost", "status"), ("?event=item.deleted", "event")]:
        response = api.get(path + query)
        assert response.status_code == 400 and list(response.json()["errors"]) == [field], query


def test_a_failed_delivery_is_redelivered_with_the_same_webhook_id(
    api, create, receiver, settings, django_capture_on_commit_callbacks
):
    settings.SORA_WEBHOOK_RETRY_SCHEDULE = []
    receiver.default = 500
    created = create()
    with django_capture_on_commit_callbacks(execute=True):
        delivery = api.post(f"/api/v1/webhooks/{created['id']}/test/").json()
    failed = api.get(f"/api/v1/deliveries/{delivery['id']}/").json()
    assert (failed["status"], failed["attempts"], failed["last_status_code"]) == ("failed", 1, 500)

    receiver.default = 200
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/api/v1/deliveries/{delivery['id']}/redeliver/")

    assert response.status_code == 202, response.json()
    assert receiver.webhook_ids() == [delivery["webhook_id"], delivery["webhook_id"]]
    assert len(receiver.verified(created["secret"])) == 2
    assert receiver.requests[0]["body"] == receiver.requests[1]["body"]
    shown = api.get(f"/api/v1/deliveries/{delivery['id']}/").json()
    assert (shown["status"], shown["attempts"], shown["last_status_code"]) == ("succeeded", 2, 200)
    assert [a["status_code"] for a in shown["attempt_log"]] == [500, 200]


def test_redelivering_to_a_disabled_endpoint_is_a_409_until_it_is_turned_on(
    api, create, receiver, settings, django_capture_on_commit_callbacks
):
    settings.SORA_WEBHOOK_RETRY_SCHEDULE = []
    settings.SORA_WEBHOOK_DISABLE_AFTER_SECONDS = 0  # the first failure disables it
    receiver.default = 500
    created = create()
    with django_capture_on_commit_callbacks(execute=True):
        delivery = api.post(f"/api/v1/webhooks/{created['id']}/test/").json()
    disabled = api.get(f"/api/v1/webhooks/{created['id']}/").json()
    assert disabled["is_active"] is False and disabled["disabled_at"] and disabled["disabled_reason"]

    receiver.default = 200
    with django_capture_on_commit_callbacks(execute=True):
        refused = api.post(f"/api/v1/deliveries/{delivery['id']}/redeliver/")

    assert refused.status_code == 409 and "turn it on" in refused.json()["detail"]
    assert len(receiver.requests) == 1
    assert api.get(f"/api/v1/deliveries/{delivery['id']}/").json()["status"] == "failed"

    turned_on = api.patch(f"/api/v1/webhooks/{created['id']}/", {"is_active": True}, format="json").json()
    assert (turned_on["is_active"], turned_on["disabled_at"], turned_on["failing_since"]) == (True, None, None)
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(f"/api/v1/deliveries/{delivery['id']}/redeliver/").status_code == 202
    assert receiver.webhook_ids() == [delivery["webhook_id"]] * 2
    assert api.get(f"/api/v1/deliveries/{delivery['id']}/").json()["status"] == "succeeded"


def test_a_delivery_being_sent_is_not_redelivered(api, manager, endpoint_and_delivery):
    _, delivery = endpoint_and_delivery
    Delivery.objects.filter(pk=delivery.pk).update(attempt_started_at=timezone.now())  # a worker holds it

    response = api.as_user(manager).post(f"/api/v1/deliveries/{delivery.pk}/redeliver/")

    assert response.status_code == 409 and "right now" in response.json()["detail"]


def test_junk_bodies_are_a_400_not_a_500(api, manager):
    api.as_user(manager)
    for body, content_type in [(b"[]", "application/json"), (b"{", "application/json"), (b"x", "text/plain")]:
        response = api.post("/api/v1/webhooks/", body, content_type=content_type)
        assert response.status_code in (400, 415), (body, response.status_code)
        assert response.json()["detail"]
    assert Endpoint.objects.count() == 0


def test_the_schema_lists_the_webhook_routes(client, db):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    paths = schema["paths"]
    assert set(paths["/api/v1/webhooks/"]) >= {"get", "post"}
    assert set(paths["/api/v1/webhooks/{endpoint_id}/"]) >= {"get", "patch", "delete"}
    for path in [
        "/api/v1/webhooks/{endpoint_id}/rotate-secret/",
        "/api/v1/webhooks/{endpoint_id}/test/",
        "/api/v1/deliveries/{delivery_id}/redeliver/",
    ]:
        assert "post" in paths[path], path
    for path in ["/api/v1/webhooks/{endpoint_id}/deliveries/", "/api/v1/deliveries/{delivery_id}/"]:
        assert "get" in paths[path], path
    created = paths["/api/v1/webhooks/"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
    components = schema["components"]["schemas"]
    assert "secret" in components[created.rsplit("/", 1)[1]]["properties"]
    listed = paths["/api/v1/webhooks/{endpoint_id}/"]["get"]["responses"]["200"]["content"]["application/json"]
    assert "secret" not in components[listed["schema"]["$ref"].rsplit("/", 1)[1]]["properties"]
    filters = {p["name"] for p in paths["/api/v1/webhooks/{endpoint_id}/deliveries/"]["get"]["parameters"]}
    assert {"status", "event"} <= filters
