"""Reads for webhook endpoints and the delivery log. Missing rows raise, so views cannot forget."""

from django.db.models import QuerySet

from annotations.exceptions import NotFound

from .models import Delivery, Endpoint


def endpoint_list() -> QuerySet[Endpoint]:
    return Endpoint.objects.prefetch_related("domains").order_by("id")


def endpoint_get(*, endpoint_id: int) -> Endpoint:
    endpoint = endpoint_list().filter(pk=endpoint_id).first()
    if endpoint is None:
        raise NotFound("Webhook endpoint not found.")
    return endpoint


def delivery_list(*, endpoint: Endpoint, filters: dict) -> QuerySet[Delivery]:
    deliveries = endpoint.deliveries.order_by("-created_at", "-id")
    if filters.get("status"):
        deliveries = deliveries.filter(status=filters["status"])
    if filters.get("event"):
        deliveries = deliveries.filter(event_type=filters["event"])
    return deliveries.prefetch_related("attempt_log")


def delivery_get(*, delivery_id: int) -> Delivery:
    delivery = (
        Delivery.objects.select_related("endpoint").prefetch_related("attempt_log").filter(pk=delivery_id).first()
    )
    if delivery is None:
        raise NotFound("Delivery not found.")
    return delivery
