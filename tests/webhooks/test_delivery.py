"""Webhook deliveries end to end against a real receiver on loopback: the outbox, signatures verified with the
`standardwebhooks` library, retries with one webhook-id, a receiver that was down, the broker down at approval
time, redirects, timeouts, the bounded log, redaction, rotation, and disabling an endpoint that keeps failing."""

import json
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from annotations import services as annotation_services
from annotations.exceptions import InvalidInput, InvalidTransition
from models_app import finetuning
from models_app.models import ModelVersion
from tests.factories import ItemFactory
from webhooks import services
from webhooks.models import Delivery, DeliveryAttempt, Endpoint


@pytest.fixture
def endpoint(receiver, manager):
    return services.endpoint_create(url=receiver.url, events=["item.approved", "item.rejected"], user=manager)


def test_an_approval_reaches_the_receiver_signed_and_logged(
    endpoint, receiver, item, approve, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        approve(item, "Hello Ada, your parcel left today.")

    [event] = receiver.verified(endpoint.secret)
    assert event["type"] == "item.approved"
    data = event["data"]
    assert data["item_id"] == item.pk and data["domain"] == item.domain.slug
    assert data["final_text"] == "Hello Ada, your parcel left today." and data["edited"] is True
    assert data["draft"] == item.draft and data["reviewers"] == ["rita"] and data["approved_at"]
    delivery = Delivery.objects.get()
    assert receiver.webhook_ids() == [delivery.message_id]
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 1, 200)
    [attempt] = delivery.attempt_log.all()
    assert attempt.status_code == 200 and attempt.response_body == "ok" and attempt.latency_ms is not None


def test_an_event_exists_only_if_its_approval_committed(endpoint, receiver, item, approve):
    with pytest.raises(RuntimeError), transaction.atomic():
        approve(item)
        assert Delivery.objects.count() == 1  # written with the approval …
        raise RuntimeError("the request failed after the approval")
    assert Delivery.objects.count() == 0  # … and gone with it
    assert receiver.requests == []


def due_now(delivery: Delivery) -> None:
    """Skip the back-off wait (the tests do not sleep through it)."""
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


def test_a_receiver_answering_500_then_200_gets_the_event_once_under_one_webhook_id(
    endpoint, receiver, item, approve, django_capture_on_commit_callbacks
):
    receiver.script = [500]
    with django_capture_on_commit_callbacks(execute=True):
        approve(item)
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    assert delivery.next_attempt_at > timezone.now()  # backing off
    assert services.delivery_send(delivery_id=delivery.pk) is None  # not due yet: nothing sent

    due_now(delivery)
    services.delivery_send(delivery_id=delivery.pk)

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)
    assert receiver.webhook_ids() == [delivery.message_id] * 2
    assert [r["body"] for r in receiver.requests][0] == receiver.requests[1]["body"]  # the same body, re-signed
    assert [a.status_code for a in delivery.attempt_log.all()] == [500, 200]
    assert len(receiver.verified(endpoint.secret)) == 2


def test_the_back_off_grows_with_jitter_and_ends_after_the_schedule(settings):
    settings.SORA_WEBHOOK_RETRY_SCHEDULE = [10, 100, 1000]
    delays = [services.retry_delay(n) for n in (1, 2, 3)]
    assert 8 <= delays[0] <= 12 and 80 <= delays[1] <= 120 and 800 <= delays[2] <= 1200
    assert len({services.retry_delay(1) for _ in range(20)}) > 1  # jitter
    assert services.retry_delay(4) is None


def test_a_receiver_that_was_down_gets_every_event_when_it_is_back(
    endpoint, receiver, reviewer, domain, approve, django_capture_on_commit_callbacks, settings
):
    settings.SORA_WEBHOOK_SWEEP_GRACE_SECONDS = 0
    receiver.stop()
    items = [ItemFactory(domain=domain) for _ in range(4)]
    with django_capture_on_commit_callbacks(execute=True):
        for item in items:
            approve(item)
    assert list(Delivery.objects.values_list("status", flat=True)) == ["pending"] * 4
    assert all("ConnectError" in a.error for d in Delivery.objects.all() for a in d.attempt_log.all())

    receiver.start()  # the same port
    Delivery.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert services.deliveries_sweep() == {"queued": 4}  # eager in tests: sent inline

    assert set(Delivery.objects.values_list("status", flat=True)) == {"succeeded"}
    assert sorted(receiver.webhook_ids()) == sorted(Delivery.objects.values_list("message_id", flat=True))
    assert sorted(e["data"]["item_id"] for e in receiver.verified(endpoint.secret)) == sorted(i.pk for i in items)


@contextmanager
def broker_down():
    """Point the app at a broker nobody listens on, not eager: publishing fails for real."""
    from sora_web.celery import app

    names = ("task_always_eager", "broker_url", "task_publish_retry")
    saved = {name: app.conf[name] for name in names}
    app.conf.update(task_always_eager=False, broker_url="redis://127.0.0.1:9/0", task_publish_retry=False)
    app._pool, app.amqp._producer_pool = None, None
    try:
        yield
    finally:
        app.conf.update(saved)
        app._pool, app.amqp._producer_pool = None, None


def test_nothing_is_lost_when_the_broker_is_down_at_approval(
    endpoint, receiver, item, approve, django_capture_on_commit_callbacks, settings
):
    settings.SORA_WEBHOOK_SWEEP_GRACE_SECONDS = 0
    with broker_down(), django_capture_on_commit_callbacks(execute=True):
        review = approve(item)  # the approval must not fail with the broker
    assert review.pk and Delivery.objects.get().status == "pending" and receiver.requests == []

    Delivery.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    services.deliveries_sweep()

    assert Delivery.objects.get().status == "succeeded"
    assert [e["data"]["item_id"] for e in receiver.verified(endpoint.secret)] == [item.pk]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://224.0.0.1/hook",
        "http://0.0.0.0/hook",
        "ftp://example.org/hook",
        "http://user:pw@example.org/hook",
        "http://no-such-host.invalid/hook",
    ],
)
def test_addresses_a_webhook_may_not_reach_are_refused_when_saved(url, manager, settings):
    settings.SORA_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(InvalidInput) as refused:
        services.endpoint_create(url=url, events=["item.approved"], user=manager)
    assert "url" in refused.value.extra["errors"]
    assert not Endpoint.objects.exists()


def test_https_is_required_where_the_setting_says(manager, settings):
    settings.SORA_WEBHOOK_REQUIRE_HTTPS = True
    with pytest.raises(InvalidInput, match="url"):
        services.endpoint_create(url="http://127.0.0.1/hook", events=["item.approved"], user=manager)


def test_an_address_is_checked_again_when_sending(endpoint, receiver, item, approve, settings):
    """A host that resolved to an allowed address when saved may resolve elsewhere later (DNS rebinding)."""
    settings.SORA_WEBHOOK_ALLOW_PRIVATE = False  # now the receiver's loopback address is refused
    approve(item)
    delivery = Delivery.objects.get()

    services.delivery_send(delivery_id=delivery.pk)

    assert receiver.requests == []
    [attempt] = Delivery.objects.get().attempt_log.all()
    assert attempt.status_code is None and attempt.error.startswith("refused:") and "127.0.0.1" in attempt.error


def test_redirects_are_not_followed(endpoint, receiver, item, approve, django_capture_on_commit_callbacks):
    receiver.script = [302]
    receiver.extra_headers = {"location": "http://127.0.0.1:9/elsewhere"}
    with django_capture_on_commit_callbacks(execute=True):
        approve(item)
    delivery = Delivery.objects.get()
    assert len(receiver.requests) == 1 and (delivery.status, delivery.last_status_code) == ("pending", 302)


def test_a_slow_receiver_times_out_and_a_long_answer_is_logged_in_part(
    endpoint, receiver, item, approve, django_capture_on_commit_callbacks, settings
):
    settings.SORA_WEBHOOK_TIMEOUT_SECONDS = 0.3
    settings.SORA_WEBHOOK_LOG_BYTES = 100
    receiver.delay = 1.0
    with django_capture_on_commit_callbacks(execute=True):
        approve(item)
    delivery = Delivery.objects.get()
    [attempt] = delivery.attempt_log.all()
    assert attempt.error == "timeout" and delivery.status == "pending"

    receiver.delay, receiver.answer_body = 0, b"x" * 10_000
    due_now(delivery)
    services.delivery_send(delivery_id=delivery.pk)
    last = delivery.attempt_log.order_by("number").last()
    assert last.status_code == 200 and len(last.response_body) == 100


def test_medical_notes_are_redacted_in_the_payload(receiver, manager, medical_note, django_capture_on_commit_callbacks):
    from tests.factories import reviewer_factory

    endpoint = services.endpoint_create(url=receiver.url, events=["item.approved"], user=manager)
    ItemFactory(
        domain=medical_note,
        input="Follow-up for Imogen Castellane, phone 07700 900123.",
        metadata={"patient_name": "Imogen Castellane"},
        draft="Imogen Castellane is recovering well.",
    )
    with django_capture_on_commit_callbacks(execute=True):
        for name in ("nurse", "doctor"):  # medical notes need two approvals
            clinician = reviewer_factory(medical_note, username=name)
            claimed = annotation_services.item_claim_next(reviewer=clinician)
            annotation_services.review_submit(
                item_id=claimed.pk, reviewer=clinician, decision="approve", version=claimed.version
            )

    [event] = receiver.verified(endpoint.secret)
    sent = json.dumps(event)
    assert "Imogen" not in sent and "Castellane" not in sent and "07700" not in sent
    assert event["data"]["redacted"] is True and "[NAME]" in event["data"]["final_text"]
    assert event["data"]["reviewers"] == ["nurse", "doctor"]


def test_rejections_and_promotions_are_events_and_domains_filter_them(
    receiver, manager, reviewer, domain, tiny_model, django_capture_on_commit_callbacks
):
    from tests.factories import DomainFactory

    everything = services.endpoint_create(
        url=receiver.url, events=["item.rejected", "model.promoted"], user=manager, domains=[domain.slug]
    )
    elsewhere = services.endpoint_create(
        url=receiver.url + "/other", events=["item.rejected"], user=manager, domains=[DomainFactory().slug]
    )
    ItemFactory(domain=domain)
    claimed = annotation_services.item_claim_next(reviewer=reviewer)
    with django_capture_on_commit_callbacks(execute=True):
        annotation_services.review_submit(
            item_id=claimed.pk, reviewer=reviewer, decision="reject", version=claimed.version, reason="Wrong order."
        )
        candidate = ModelVersion.objects.create(name="tiny-2", base_model=tiny_model.base_model, parent=tiny_model)
        finetuning.version_promote(version=candidate, domain=domain, user=manager, reason="by hand")

    events = receiver.verified(everything.secret)
    assert [e["type"] for e in events] == ["item.rejected", "model.promoted"]
    assert events[0]["data"]["reason"] == "Wrong order." and events[0]["data"]["final_text"] is None
    assert events[1]["data"] | {"promoted_at": None} == events[1]["data"] | {
        "model_version": "tiny-2",
        "parent": tiny_model.name,
        "domain": domain.slug,
        "promoted_at": None,
    }
    assert not Delivery.objects.filter(endpoint=elsewhere).exists()


def test_during_a_rotation_both_secrets_sign(endpoint, receiver, item, approve, django_capture_on_commit_callbacks):
    old = endpoint.secret
    rotated = services.endpoint_secret_rotate(endpoint=endpoint, user=None)
    with django_capture_on_commit_callbacks(execute=True):
        approve(item)
    assert receiver.verified(old) and receiver.verified(rotated.secret)

    Endpoint.objects.filter(pk=endpoint.pk).update(previous_secret_expires_at=timezone.now())
    services.endpoint_ping(endpoint=endpoint, user=None)  # on commit: not run here
    delivery = Delivery.objects.filter(event_type="ping").get()
    services.delivery_send(delivery_id=delivery.pk)
    ping = receiver.requests[-1]
    Webhook(rotated.secret).verify(ping["body"], ping["headers"])
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(ping["body"], ping["headers"])


def test_an_endpoint_failing_past_the_limit_is_disabled_the_admins_told_and_its_events_kept(
    endpoint, receiver, item, approve, django_capture_on_commit_callbacks, settings
):
    settings.SORA_WEBHOOK_DISABLE_AFTER_SECONDS = 60
    settings.SORA_WEBHOOK_SWEEP_GRACE_SECONDS = 0
    settings.ADMINS = [("Ops", "ops@example.org")]
    receiver.default = 503
    with django_capture_on_commit_callbacks(execute=True):
        approve(item)
    Endpoint.objects.filter(pk=endpoint.pk).update(failing_since=timezone.now() - timedelta(seconds=61))
    delivery = Delivery.objects.get()
    due_now(delivery)
    with django_capture_on_commit_callbacks(execute=True):
        services.delivery_send(delivery_id=delivery.pk)

    endpoint.refresh_from_db()
    assert not endpoint.is_active and "failed since" in endpoint.disabled_reason
    assert len(mail.outbox) == 1 and endpoint.url in mail.outbox[0].subject
    due_now(delivery)
    assert services.deliveries_sweep() == {"queued": 0}  # a disabled endpoint gets nothing …
    assert Delivery.objects.get().status == "pending"  # … and loses nothing

    receiver.default = 200
    services.endpoint_update(endpoint=endpoint, user=None, is_active=True)
    services.deliveries_sweep()
    assert Delivery.objects.get().status == "succeeded"


def test_a_delivery_out_of_retries_fails_and_can_be_sent_again_by_hand(
    endpoint, receiver, item, approve, django_capture_on_commit_callbacks, settings
):
    settings.SORA_WEBHOOK_RETRY_SCHEDULE = [0]
    receiver.script = [500, 500]
    with django_capture_on_commit_callbacks(execute=True):
        approve(item)  # the retry is due at once (tasks run inline here)
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("failed", 2, None)

    with django_capture_on_commit_callbacks(execute=True):
        services.delivery_redeliver(delivery_id=delivery.pk, user=None)

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("succeeded", 3)
    assert receiver.webhook_ids() == [delivery.message_id] * 3


def test_a_delivery_is_sent_once_when_two_workers_get_its_message(endpoint, receiver, item, approve):
    approve(item)  # its on_commit dispatch never runs here
    delivery = Delivery.objects.get()
    Delivery.objects.filter(pk=delivery.pk).update(attempt_started_at=timezone.now())  # another worker sends it

    assert services.delivery_send(delivery_id=delivery.pk) is None
    assert receiver.requests == []


@pytest.mark.parametrize("url", ["http://exa mple.org/hook", "http://example.org:99999/hook", "https://"])
def test_malformed_urls_are_refused(url, manager):
    with pytest.raises(InvalidInput, match="url"):
        services.endpoint_create(url=url, events=["item.approved"], user=manager)


def test_a_test_ping_to_an_endpoint_that_is_off_is_refused(endpoint):
    services.endpoint_update(endpoint=endpoint, user=None, is_active=False)
    with pytest.raises(InvalidTransition):
        services.endpoint_ping(endpoint=endpoint, user=None)
    assert not Delivery.objects.exists()


def test_a_redelivery_that_fails_starts_the_retry_schedule_over_and_keeps_the_earlier_success(
    endpoint, receiver, item, approve, django_capture_on_commit_callbacks, settings
):
    settings.SORA_WEBHOOK_RETRY_SCHEDULE = [60]
    with django_capture_on_commit_callbacks(execute=True):
        approve(item)
    delivered_at = Delivery.objects.get().delivered_at
    receiver.default = 500
    with django_capture_on_commit_callbacks(execute=True):
        services.delivery_redeliver(delivery_id=Delivery.objects.get().pk, user=None)

    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.delivered_at) == ("pending", 2, delivered_at)
    assert delivery.next_attempt_at > timezone.now() + timedelta(seconds=40)  # a new round: one retry left


@pytest.mark.django_db(transaction=True)  # the other "worker" is another connection: it must see the row
def test_a_sender_that_outlived_its_lease_logs_its_attempt_and_leaves_the_delivery_to_the_new_holder(
    endpoint, receiver, item, approve, settings
):
    approve(item)  # sent at once (autocommit here): make it due again, unsent
    DeliveryAttempt.objects.all().delete()
    Delivery.objects.update(status="pending", attempts=0, next_attempt_at=timezone.now())
    delivery = Delivery.objects.get()
    receiver.delay = 0.5

    def second_worker_takes_over():
        import time as clock

        clock.sleep(0.2)  # while the first waits on the receiver, its lease is taken (as if it had run out)
        Delivery.objects.filter(pk=delivery.pk).update(attempt_started_at=timezone.now(), attempts=F("attempts") + 1)
        connection.close()  # this thread's own connection

    import threading

    taker = threading.Thread(target=second_worker_takes_over)
    taker.start()
    services.delivery_send(delivery_id=delivery.pk)
    taker.join()

    delivery.refresh_from_db()
    assert [a.number for a in delivery.attempt_log.all()] == [1]  # logged, no clash with the new holder's number
    assert delivery.status == "pending" and delivery.attempt_started_at is not None  # still the new holder's


def test_a_delivery_whose_sender_died_can_be_redelivered(endpoint, receiver, item, approve, settings):
    settings.SORA_WEBHOOK_TIMEOUT_SECONDS = 1
    approve(item)  # not sent here: its on_commit dispatch never runs
    delivery = Delivery.objects.get()
    Delivery.objects.filter(pk=delivery.pk).update(attempt_started_at=timezone.now())  # a sender is on it
    with pytest.raises(InvalidTransition):
        services.delivery_redeliver(delivery_id=delivery.pk, user=None)

    # That sender died: its lease ran out (timeout + 30 s ago).
    Delivery.objects.filter(pk=delivery.pk).update(attempt_started_at=timezone.now() - timedelta(seconds=32))
    services.delivery_redeliver(delivery_id=delivery.pk, user=None)
    services.delivery_send(delivery_id=delivery.pk)

    assert Delivery.objects.get().status == "succeeded" and len(receiver.requests) == 1


def test_an_event_nobody_subscribes_to_costs_one_query_and_builds_no_payload(db, django_assert_num_queries):
    built = []
    with django_assert_num_queries(1):
        assert services.event_emit(event_type="item.approved", data=lambda: built.append(1) or {}, domain=None) == []
    assert built == []
