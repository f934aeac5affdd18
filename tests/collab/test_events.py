import asyncio
import threading

import pytest
from channels.layers import get_channel_layer
from django.db import transaction

from annotations import services
from collab.events import item_group


def listen(group: str):
    """Subscribes to `group` now; `next_message()` waits up to 2 s for what it hears. One event loop of its own
    for the whole test: a Redis pub/sub layer's channels live in the loop that made them."""
    layer = get_channel_layer()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=10)

    channel = run(layer.new_channel())
    run(layer.group_add(group, channel))

    def next_message():
        return run(asyncio.wait_for(layer.receive(channel), timeout=2))

    return next_message


@pytest.mark.django_db(transaction=True)
def test_claim_announces_the_new_status_after_commit(reviewer, item):
    next_message = listen(item_group(item.pk))

    claimed = services.item_claim_next(reviewer=reviewer)

    assert next_message() == {"type": "item_status", "status": "in_review", "version": claimed.version}


@pytest.mark.django_db(transaction=True)
def test_no_event_for_a_rolled_back_change(reviewer, item):
    next_message = listen(item_group(item.pk))

    with pytest.raises(RuntimeError), transaction.atomic():
        services.item_claim_next(reviewer=reviewer)
        raise RuntimeError("roll back")

    with pytest.raises(TimeoutError):
        next_message()
