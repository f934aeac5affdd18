"""Realtime events: services announce state changes here, never on the layer directly."""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)


def item_group(item_id: int) -> str:
    return f"item-{item_id}"


def send_event_on_commit(group: str, type: str, payload: dict) -> None:
    """Send `payload` to a channel group once the current transaction commits,
    so nobody hears of a change that was rolled back."""

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(group, {"type": type.replace(".", "_"), **payload})
        except Exception:  # a dead channel layer must not undo a committed review
            logger.warning("could not send %s to %s", type, group, exc_info=True)

    transaction.on_commit(send)
