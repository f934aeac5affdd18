"""Realtime events: services announce state changes here, never on the layer directly.

Events are notifications: a client that misses one catches up from the
snapshot it gets on (re)connect, so a send that fails is logged, not retried.
"""

import asyncio
import logging
import os
import threading

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)


def item_group(item_id: int) -> str:
    return f"item-{item_id}"


def send_event_on_commit(group: str, type: str, payload: dict) -> None:
    """Send `payload` to a channel group once the current transaction commits,
    so nobody hears of a change that was rolled back."""
    message = _message(type, payload)
    transaction.on_commit(lambda: _publisher.publish(group, message))


def send_event(group: str, type: str, payload: dict) -> None:
    """Send now: for what is already stored (a streamed chunk) or stored nowhere (an error)."""
    _publisher.publish(group, _message(type, payload))


def _message(type: str, payload: dict) -> dict:
    return {"type": type.replace(".", "_"), **payload}


class _LayerPublisher:
    """Sends from sync code through one long-lived event loop per process, in order.

    async_to_sync would start a new event loop, and with it a new Redis
    connection, for every message sent from a claim or a review.
    Here one thread keeps one loop and its connection pool and sends queued
    messages one after another, so a group sees them in commit order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None

    def publish(self, group: str, message: dict) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        if isinstance(layer, InMemoryChannelLayer):
            # In-process layer (unit tests): its queues live in the caller's loop; send directly.
            async_to_sync(layer.group_send)(group, message)
            return
        self._ensure_running()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (group, message))

    def _ensure_running(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return  # started by another thread meanwhile
            # First use in this process (or in a child forked by a Celery worker).
            loop = asyncio.new_event_loop()
            started = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                self._queue = asyncio.Queue()
                loop.create_task(self._send_forever())
                started.set()
                loop.run_forever()

            threading.Thread(target=run, name="channel-layer-publisher", daemon=True).start()
            started.wait()
            self._loop, self._pid = loop, os.getpid()

    async def _send_forever(self) -> None:
        layer = get_channel_layer()
        while True:
            group, message = await self._queue.get()
            try:
                await layer.group_send(group, message)
            except Exception:  # a dead channel layer must not stop later events
                logger.warning("could not send %s to %s", message.get("type"), group, exc_info=True)


_publisher = _LayerPublisher()
