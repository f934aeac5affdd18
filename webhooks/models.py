"""Webhook endpoints, the outbox of deliveries, and every attempt to send one (PRODUCT.md §7)."""

from django.conf import settings
from django.db import models


class Event(models.TextChoices):
    ITEM_APPROVED = "item.approved"
    ITEM_REJECTED = "item.rejected"
    MODEL_PROMOTED = "model.promoted"
    PING = "ping"  # the "send test" button; never subscribed to


SUBSCRIBABLE = [Event.ITEM_APPROVED, Event.ITEM_REJECTED, Event.MODEL_PROMOTED]


class Endpoint(models.Model):
    """A URL that receives signed events. `secret` signs every delivery; while a rotation is under way
    `previous_secret` signs too, until `previous_secret_expires_at`, so a receiver can switch over."""

    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list, help_text='Subscribed event types, e.g. ["item.approved"].')
    domains = models.ManyToManyField(
        "annotations.Domain", blank=True, related_name="+", help_text="Only these domains' events; none: all."
    )
    description = models.CharField(max_length=500, blank=True)
    is_active = models.BooleanField(default=True, help_text="Inactive endpoints get no new events.")
    secret = models.CharField(max_length=100)
    previous_secret = models.CharField(max_length=100, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    failing_since = models.DateTimeField(
        null=True, blank=True, help_text="First failed attempt since the last success; empty while healthy."
    )
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.url


class Delivery(models.Model):
    """One event for one endpoint: the outbox row, written in the transaction of its cause.

    `message_id` is the `webhook-id` header, the same on every attempt; `body` is the exact JSON sent
    (and signed), fixed at creation. A delivery is pending until an attempt gets a 2xx (succeeded) or
    the retry schedule runs out (failed); `next_attempt_at` is when it is due.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_type = models.CharField(max_length=32, choices=Event.choices)
    message_id = models.CharField(max_length=64, unique=True)
    body = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0, help_text="Attempts started (a sender counts its own).")
    round_started_after = models.PositiveIntegerField(
        default=0, help_text="Attempts before the current retry schedule began (a redelivery by hand starts one)."
    )
    next_attempt_at = models.DateTimeField(null=True, blank=True, help_text="Due then; empty when finished.")
    attempt_started_at = models.DateTimeField(
        null=True, blank=True, help_text="A worker is sending it (a lease: a later sender waits until it ends)."
    )
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="delivery_due_idx")]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.event_type} → {self.endpoint_id} ({self.status})"


class DeliveryAttempt(models.Model):
    """One try: what the receiver answered (or why nothing was sent), and how long it took."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True, help_text="The start of the response (SORA_WEBHOOK_LOG_BYTES).")
    error = models.TextField(blank=True, help_text="Why there was no answer: refused address, timeout …")

    class Meta:
        ordering = ["delivery_id", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="attempt_number_once")]

    def __str__(self) -> str:
        return f"Attempt {self.number} of delivery {self.delivery_id}"
