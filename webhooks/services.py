"""Webhooks (PRODUCT.md §7): endpoints, the outbox, and sending.

An event becomes one Delivery row per subscribed endpoint inside the transaction of its cause
(`event_emit`), so it exists if and only if the approval, rejection or promotion committed. After
the commit each delivery is queued on the `webhooks` queue; the periodic sweep queues any that never
reached a worker (broker down) or whose retry is due. `delivery_send` makes one attempt: it takes a
short lease on the row, checks the address again, posts the signed body without following redirects,
logs the answer and schedules the next try with exponential back-off and jitter, about a day in all.
"""

import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.mail import mail_admins
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from annotations.exceptions import InvalidInput, InvalidTransition
from annotations.models import Domain, Item, Review
from annotations.redaction import redact
from annotations.services.audit import audit_record

from . import signing
from .addresses import AddressRefused, resolve_allowed
from .models import SUBSCRIBABLE, Delivery, DeliveryAttempt, Endpoint, Event

logger = logging.getLogger(__name__)


# --- endpoints ---------------------------------------------------------------------


def endpoint_values_check(*, url: str | None, events: list | None, domains: list | None) -> dict:
    """Check what a manager sent; InvalidInput names the field."""
    values: dict = {}
    if url is not None:
        try:
            resolve_allowed(url)
        except AddressRefused as exc:
            raise InvalidInput("url", str(exc)) from None
        values["url"] = url
    if events is not None:
        unknown = sorted(set(events) - set(SUBSCRIBABLE))
        if not events or unknown:
            raise InvalidInput("events", f"Choose from {[str(e) for e in SUBSCRIBABLE]}; unknown: {unknown}.")
        values["events"] = sorted(set(events))
    if domains is not None:
        found = list(Domain.objects.filter(slug__in=domains))
        missing = sorted(set(domains) - {domain.slug for domain in found})
        if missing:
            raise InvalidInput("domains", f"Unknown domains {missing}.")
        values["domains"] = found
    return values


@transaction.atomic
def endpoint_create(
    *, url: str, events: list[str], user: AbstractBaseUser | None, domains: list[str] | None = None, description=""
) -> Endpoint:
    values = endpoint_values_check(url=url, events=events, domains=domains or [])
    endpoint = Endpoint.objects.create(
        url=values["url"],
        events=values["events"],
        description=description,
        secret=signing.secret_generate(),
        created_by=user,
    )
    endpoint.domains.set(values["domains"])
    audit_record(actor=user, verb="webhook.created", target=endpoint, after=_endpoint_state(endpoint))
    return endpoint


@transaction.atomic
def endpoint_update(*, endpoint: Endpoint, user: AbstractBaseUser | None, **changes) -> Endpoint:
    """Change url, events, domains, description or is_active. Turning an endpoint back on clears its failure
    record: its pending deliveries are sent again by the sweep."""
    before = _endpoint_state(endpoint)
    values = endpoint_values_check(url=changes.get("url"), events=changes.get("events"), domains=changes.get("domains"))
    for name in ("url", "events"):
        if name in values:
            setattr(endpoint, name, values[name])
    if "description" in changes:
        endpoint.description = changes["description"]
    if "is_active" in changes:
        endpoint.is_active = changes["is_active"]
        if endpoint.is_active:
            endpoint.failing_since, endpoint.disabled_at, endpoint.disabled_reason = None, None, ""
    endpoint.save()
    if "domains" in values:
        endpoint.domains.set(values["domains"])
    audit_record(actor=user, verb="webhook.updated", target=endpoint, before=before, after=_endpoint_state(endpoint))
    return endpoint


@transaction.atomic
def endpoint_delete(*, endpoint: Endpoint, user: AbstractBaseUser | None) -> None:
    audit_record(actor=user, verb="webhook.deleted", target=endpoint, before=_endpoint_state(endpoint))
    endpoint.delete()


@transaction.atomic
def endpoint_secret_rotate(*, endpoint: Endpoint, user: AbstractBaseUser | None) -> Endpoint:
    """A new secret signs from now on; the old one signs too for SORA_WEBHOOK_ROTATION_OVERLAP_SECONDS, so the
    receiver can switch without dropping an event."""
    endpoint = Endpoint.objects.select_for_update().get(pk=endpoint.pk)
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = timezone.now() + timedelta(
        seconds=settings.SORA_WEBHOOK_ROTATION_OVERLAP_SECONDS
    )
    endpoint.secret = signing.secret_generate()
    endpoint.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
    audit_record(actor=user, verb="webhook.secret_rotated", target=endpoint)
    return endpoint


def endpoint_ping(*, endpoint: Endpoint, user: AbstractBaseUser | None) -> Delivery:
    """The "send test" button: a `ping` event to this endpoint alone, whatever it subscribes to."""
    if not endpoint.is_active:
        raise InvalidTransition("The endpoint is off; turn it on to send a test.", status="inactive")
    with transaction.atomic():
        data = {"endpoint_id": endpoint.pk, "description": endpoint.description}
        delivery = _delivery_create(endpoint=endpoint, event_type=Event.PING, data=data)
        audit_record(actor=user, verb="webhook.ping", target=endpoint, after={"delivery": delivery.pk})
        transaction.on_commit(lambda: _dispatch(delivery.pk))
    return delivery


def _endpoint_state(endpoint: Endpoint) -> dict:
    return {"url": endpoint.url, "events": endpoint.events, "is_active": endpoint.is_active}


def secrets_in_use(endpoint: Endpoint, now) -> list[str]:
    keep_previous = endpoint.previous_secret and (
        endpoint.previous_secret_expires_at is None or endpoint.previous_secret_expires_at > now
    )
    return [endpoint.secret, endpoint.previous_secret] if keep_previous else [endpoint.secret]


# --- events ------------------------------------------------------------------------


def event_emit(*, event_type: str, data: Callable[[], dict], domain: Domain | None) -> list[Delivery]:
    """Write one delivery per active endpoint subscribed to `event_type` (and to `domain`, when it names
    domains) in the caller's transaction; queue them once it commits. `data` builds the payload, once, and
    only when an endpoint wants it: an approval with no subscriber pays one query, no payload (redaction)."""
    subscribed = [
        endpoint
        for endpoint in Endpoint.objects.filter(is_active=True).prefetch_related("domains")
        if event_type in endpoint.events
        and (not endpoint.domains.all() or (domain is not None and domain in endpoint.domains.all()))
    ]
    payload = data() if subscribed else {}
    deliveries = [_delivery_create(endpoint=e, event_type=event_type, data=payload) for e in subscribed]
    if deliveries:
        ids = [delivery.pk for delivery in deliveries]
        transaction.on_commit(lambda: [_dispatch(pk) for pk in ids])
    return deliveries


def item_event_data(*, item: Item, review: Review) -> dict:
    """The body's `data` for item.approved and item.rejected (PRODUCT.md §7); the texts are redacted when the
    domain says so, like its training examples."""
    generation = review.generation
    reviewers = list(
        item.reviews.filter(decision=review.decision)
        .order_by("created_at")
        .values_list("reviewer__username", flat=True)
    )
    clean = (lambda text: redact(text, metadata=item.metadata)) if item.domain.redact_identifiers else (lambda t: t)
    data = {
        "item_id": item.pk,
        "external_id": item.external_id,
        "domain": item.domain.slug,
        "input": clean(item.input),
        "draft": clean(item.draft),
        "final_text": clean(item.final_text) if review.decision == Review.Decision.APPROVE else None,
        "edited": review.decision == Review.Decision.APPROVE and item.final_text != item.draft,
        "model_version": generation.model_version.name if generation and generation.model_version_id else None,
        "reviewers": reviewers,
        "redacted": item.domain.redact_identifiers,
    }
    if review.decision == Review.Decision.APPROVE:
        data["approved_at"] = review.created_at.isoformat()
    else:
        data["rejected_at"] = review.created_at.isoformat()
        data["reason"] = clean(review.reason)
    return data


def _delivery_create(*, endpoint: Endpoint, event_type: str, data: dict) -> Delivery:
    now = timezone.now()
    body = json.dumps({"type": event_type, "timestamp": now.isoformat(), "data": data}, ensure_ascii=False)
    return Delivery.objects.create(
        endpoint=endpoint,
        event_type=event_type,
        message_id=f"msg_{uuid.uuid4().hex}",
        body=body,
        next_attempt_at=now,
    )


def _dispatch(delivery_id: int, countdown: float | None = None) -> bool:
    """Queue the delivery; False when the broker refused. No publish retries: this runs in the request that
    approved, which must not wait on a dead broker, and the sweep sends the due row later anyway."""
    from .tasks import deliver_task

    try:
        deliver_task.apply_async((delivery_id,), countdown=countdown, retry=False)
    except Exception:  # noqa: BLE001 — the broker is down: the row is due, and the sweep sends it later
        logger.exception("could not queue webhook delivery %s; the sweep will send it", delivery_id)
        return False
    return True


# --- sending -----------------------------------------------------------------------


class Answer:
    """What one attempt got: a status and the start of the body, or the reason there was none."""

    def __init__(self, status_code: int | None = None, body: str = "", error: str = "", latency_ms: int = 0):
        self.status_code, self.body, self.error, self.latency_ms = status_code, body, error, latency_ms

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


_client: tuple[int, httpx.Client] | None = None


def _http_client() -> httpx.Client:
    """One client (a connection pool with keep-alive) per worker process, made after the fork."""
    global _client
    import os

    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), httpx.Client(follow_redirects=False, trust_env=False))
    return _client[1]


def _post(url: str, headers: dict[str, str], body: str) -> Answer:
    """POST to the address the host resolves to now, after checking it (no DNS rebinding in between);
    the Host header and, for https, the TLS server name and certificate check stay the host's."""
    started = time.perf_counter()
    try:
        address = resolve_allowed(url)
    except AddressRefused as exc:
        return Answer(error=f"refused: {exc}")
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    target = urlunsplit(
        (parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path or "/", parts.query, "")
    )
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    request_headers = {
        **headers,
        "host": parts.netloc,
        "content-type": "application/json",
        "user-agent": "Sora-Webhooks/1",
    }
    limit, deadline = settings.SORA_WEBHOOK_LOG_BYTES, started + settings.SORA_WEBHOOK_TIMEOUT_SECONDS
    try:
        with _http_client().stream(
            "POST",
            target,
            content=body.encode(),
            headers=request_headers,
            extensions=extensions,
            timeout=settings.SORA_WEBHOOK_TIMEOUT_SECONDS,
        ) as response:
            received = b""
            for chunk in response.iter_bytes():  # httpx's timeout is per read: a trickling answer is cut here
                received += chunk
                if len(received) >= limit or time.perf_counter() > deadline:
                    break
            latency = int((time.perf_counter() - started) * 1000)
            text = received[:limit].decode("utf-8", errors="replace")
            return Answer(response.status_code, text, latency_ms=latency)
    except httpx.TimeoutException:
        return Answer(error="timeout", latency_ms=int((time.perf_counter() - started) * 1000))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return Answer(error=f"{type(exc).__name__}: {exc}", latency_ms=int((time.perf_counter() - started) * 1000))


def lease_cutoff(now):
    """A sending lease taken before this has run out: its sender waited past the timeout, or died."""
    return now - timedelta(seconds=settings.SORA_WEBHOOK_TIMEOUT_SECONDS + 30)


def retry_delay(attempt: int) -> float | None:
    """Seconds before the try after `attempt` failed tries of this round, with ±20% jitter; None when none is
    left."""
    schedule = settings.SORA_WEBHOOK_RETRY_SCHEDULE
    if attempt > len(schedule):
        return None
    return schedule[attempt - 1] * random.uniform(0.8, 1.2)


def delivery_send(*, delivery_id: int) -> Answer | None:
    """One attempt, if the delivery is due and nobody else is sending it: what the receiver answered; None when
    there was nothing to send.

    Taking the lease also numbers the attempt (attempts + 1 in the same UPDATE), so even a sender whose lease
    ran out while it waited logs its own attempt; only the lease holder decides the delivery's state."""
    now = timezone.now()
    lease_gone = lease_cutoff(now)
    taken = (
        Delivery.objects.filter(
            pk=delivery_id, status=Delivery.Status.PENDING, next_attempt_at__lte=now, endpoint__is_active=True
        )
        .filter(Q(attempt_started_at__isnull=True) | Q(attempt_started_at__lt=lease_gone))
        .update(attempt_started_at=now, attempts=F("attempts") + 1)
    )
    if not taken:
        return None
    delivery = Delivery.objects.select_related("endpoint").get(pk=delivery_id)
    endpoint, number = delivery.endpoint, delivery.attempts
    stamp = int(now.timestamp())
    headers = signing.signed_headers(secrets_in_use(endpoint, now), delivery.message_id, stamp, delivery.body)
    answer = _post(endpoint.url, headers, delivery.body)
    delay = None if answer.ok else retry_delay(number - delivery.round_started_after)
    with transaction.atomic():
        finished = timezone.now()
        DeliveryAttempt.objects.create(
            delivery=delivery,
            number=number,
            started_at=now,
            status_code=answer.status_code,
            latency_ms=answer.latency_ms,
            response_body=answer.body,
            error=answer.error,
        )
        if answer.ok:
            status, next_at = Delivery.Status.SUCCEEDED, None
        else:
            status = Delivery.Status.PENDING if delay is not None else Delivery.Status.FAILED
            next_at = finished + timedelta(seconds=delay) if delay is not None else None
        outcome = {"delivered_at": finished} if answer.ok else {}  # an earlier success stays on record
        still_ours = Delivery.objects.filter(pk=delivery.pk, attempt_started_at=now).update(
            status=status,
            attempt_started_at=None,
            next_attempt_at=next_at,
            last_status_code=answer.status_code,
            **outcome,
        )
        if not still_ours:
            logger.warning("webhook delivery %s: attempt %s outlived its lease; logged only", delivery.pk, number)
            delay = None
        if not (answer.ok and endpoint.failing_since is None):  # a healthy endpoint answering: nothing to write
            _endpoint_health(endpoint_id=endpoint.pk, ok=answer.ok, at=now)
    if delay is not None and delay <= settings.SORA_WEBHOOK_COUNTDOWN_MAX_SECONDS:
        _dispatch(delivery.pk, countdown=delay)  # a long wait is the sweep's: brokers keep countdowns badly
    return answer


def _endpoint_health(*, endpoint_id: int, ok: bool, at) -> None:
    """Record that the endpoint answers, or since when it has not; past the limit it is disabled."""
    if ok:
        Endpoint.objects.filter(pk=endpoint_id, failing_since__isnull=False).update(failing_since=None)
        return
    Endpoint.objects.filter(pk=endpoint_id, failing_since__isnull=True).update(failing_since=at)
    endpoint = Endpoint.objects.select_for_update().get(pk=endpoint_id)
    limit = timedelta(seconds=settings.SORA_WEBHOOK_DISABLE_AFTER_SECONDS)
    if endpoint.is_active and endpoint.failing_since and at - endpoint.failing_since >= limit:
        endpoint_disable(
            endpoint=endpoint, reason=f"Every delivery failed since {endpoint.failing_since:%Y-%m-%d %H:%M} UTC."
        )


def endpoint_disable(*, endpoint: Endpoint, reason: str) -> None:
    """Stop sending to it and tell the admins (e-mail; the admin shows disabled endpoints). Its pending
    deliveries wait: turning it back on sends them."""
    endpoint.is_active, endpoint.disabled_at, endpoint.disabled_reason = False, timezone.now(), reason
    endpoint.save(update_fields=["is_active", "disabled_at", "disabled_reason", "updated_at"])
    audit_record(actor=None, verb="webhook.disabled", target=endpoint, after={"reason": reason})
    subject = f"Webhook endpoint disabled: {endpoint.url}"
    message = f"{endpoint.url} ({endpoint.description or 'no description'}) was disabled. {reason}"
    transaction.on_commit(lambda: mail_admins(subject, message, fail_silently=True))


def deliveries_sweep() -> dict:
    """Queue every delivery that is due but was not sent: its message never reached a worker (broker down at
    commit time, or lost) or its retry waits longer than a countdown should. A delivery already queued is
    sent once: the lease in delivery_send turns the other message away."""
    now = timezone.now()
    grace = now - timedelta(seconds=settings.SORA_WEBHOOK_SWEEP_GRACE_SECONDS)
    due = (
        Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=grace, endpoint__is_active=True)
        .filter(Q(attempt_started_at__isnull=True) | Q(attempt_started_at__lt=grace - timedelta(minutes=1)))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[: settings.SORA_WEBHOOK_SWEEP_BATCH]
    )
    queued = sum(_dispatch(delivery_id) for delivery_id in due)
    return {"queued": queued}


@transaction.atomic
def delivery_redeliver(*, delivery_id: int, user: AbstractBaseUser | None) -> Delivery:
    """Send it again now, by hand, with the same webhook-id; if that fails, the retry schedule starts over."""
    delivery = Delivery.objects.select_for_update().select_related("endpoint").get(pk=delivery_id)
    if delivery.attempt_started_at is not None and delivery.attempt_started_at > lease_cutoff(timezone.now()):
        raise InvalidTransition("This delivery is being sent right now.", status=delivery.status)
    if not delivery.endpoint.is_active:
        raise InvalidTransition("The endpoint is disabled; turn it on first.", status=delivery.status)
    Delivery.objects.filter(pk=delivery.pk).update(
        status=Delivery.Status.PENDING, next_attempt_at=timezone.now(), round_started_after=delivery.attempts
    )
    audit_record(actor=user, verb="webhook.redelivered", target=delivery, before={"status": delivery.status})
    transaction.on_commit(lambda: _dispatch(delivery.pk))
    delivery.refresh_from_db()
    return delivery
