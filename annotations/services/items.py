import hashlib
import json

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from annotations.exceptions import IdempotencyKeyReused, InvalidInput
from annotations.models import Generation, Item
from annotations.selectors import domain_get_for_submission

from .audit import audit_record, item_state
from .generation import generation_queue


def _request_hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def item_submit(
    *,
    submitted_by: AbstractBaseUser,
    domain: str,
    input: str,
    external_id: str = "",
    metadata: dict | None = None,
    draft: str | None = None,
    priority: int = 0,
    idempotency_key: str | None = None,
) -> tuple[Item, bool]:
    """Create an item; returns (item, created).

    With an Idempotency-Key, a repeat of the same request returns the first
    item (created=False) and a different request under the same key is refused.
    An item with a draft is review-only and goes straight to `ready`; one
    without is `queued` and its draft is written by the inference worker.
    """
    fields = {
        "domain": domain,
        "input": input,
        "external_id": external_id,
        "metadata": metadata or {},
        "draft": draft,
        "priority": priority,
    }
    request_hash = _request_hash(fields)
    if idempotency_key:
        existing = Item.objects.filter(submitted_by=submitted_by, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replay(existing, request_hash), False

    domain_obj = domain_get_for_submission(slug=domain)
    if domain_obj is None:
        raise InvalidInput("domain", f"Unknown domain {domain!r}.")

    try:
        with transaction.atomic():
            item = Item.objects.create(
                domain=domain_obj,
                status=Item.Status.READY if draft else Item.Status.QUEUED,
                priority=priority,
                external_id=external_id,
                input=input,
                metadata=metadata or {},
                draft=draft or "",
                submitted_by=submitted_by,
                idempotency_key=idempotency_key or None,
                request_hash=request_hash,
            )
            if draft:
                Generation.objects.create(item=item, source=Generation.Source.SUBMITTED, text=draft)
            else:
                generation_queue(item=item, requested_by=submitted_by)
            audit_record(actor=submitted_by, verb="item.submitted", target=item, after=item_state(item))
    except IntegrityError:
        if not idempotency_key:
            raise
        # A concurrent request with the same key won the race.
        existing = Item.objects.get(submitted_by=submitted_by, idempotency_key=idempotency_key)
        return _replay(existing, request_hash), False
    return item, True


def _replay(item: Item, request_hash: str) -> Item:
    if item.request_hash != request_hash:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used with a different request body.", item_id=item.pk
        )
    return item
