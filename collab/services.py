"""What the live channel reads and writes: the snapshot a viewer starts from, and presence."""

from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from annotations.models import Generation, Item
from annotations.selectors import item_get_for_user

from .models import Viewer


def viewers_of(item_id: int) -> list[dict]:
    names = Viewer.objects.filter(item_id=item_id).values_list("user__username", flat=True).distinct()
    return [{"username": name} for name in sorted(names)]


def item_snapshot(*, item: Item) -> dict:
    """The item as a viewer who connects now must see it: the draft, or the text streamed so far and its seq."""
    latest = item.generations.order_by("-id").first()
    streaming = latest is not None and latest.status in Generation.LIVE_STATUSES
    if streaming:
        text, seq = latest.text, latest.seq
    else:
        text, seq = item.draft, (latest.seq if latest else 0)
    return {
        "type": "snapshot",
        "status": item.status,
        "version": item.version,
        "text": text,
        "seq": seq,
        "streaming": streaming,  # a draft is being written: `text` is its part so far
        "lease_owner": item.lease_owner.get_username() if item.lease_owner_id else None,
        "generation_id": latest.pk if latest else None,
        "attempt": latest.attempts if latest else 0,
        "viewers": viewers_of(item.pk),
    }


def viewer_join(*, user: AbstractBaseUser, item_id: int, channel_name: str) -> dict:
    """Register the connection and return its snapshot. NotFound if the user may not see the item.

    Called after the connection joined the item's group: a chunk stored after
    this read is also delivered live, so the viewer misses nothing.
    """
    item = item_get_for_user(user=user, item_id=item_id)
    Viewer.objects.update_or_create(channel_name=channel_name, defaults={"item": item, "user": user})
    return item_snapshot(item=item)


def viewer_leave(*, channel_name: str) -> int | None:
    """Forget the connection; returns its item id (None if it was not registered)."""
    viewer = Viewer.objects.filter(channel_name=channel_name).first()
    if viewer is None:
        return None
    viewer.delete()
    return viewer.item_id


def viewers_prune(*, older_than: timedelta = timedelta(hours=12)) -> int:
    deleted, _ = Viewer.objects.filter(connected_at__lt=timezone.now() - older_than).delete()
    return deleted
