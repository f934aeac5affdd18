import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from annotations import services
from collab.events import item_group


def listen(group: str):
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group, channel)

    def next_message():
        async def receive():
            import asyncio

            return await asyncio.wait_for(layer.receive(channel), timeout=2)

        return async_to_sync(receive)()

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
