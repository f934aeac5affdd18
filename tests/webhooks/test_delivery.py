"""Webhook deliveries end to end against a real receiver on loopback: the outbox, signatures verified with the
`standardwebhooks` library, retries with one webhook-id, a receiver that was down, the broker down at approval
time, redirects, timeouts, the bounded log, redaction, rotation, and disabling an endpoint that keeps failing."""

import json
from datetime import timedelta

import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook

from annotations import services as annotation_services
from models_app import finetuning
from models_app.models import ModelVersion
from tests.factories import ItemFactory
from webhooks import services
from webhooks.models import Delivery, Endpoint


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
