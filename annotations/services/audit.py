from django.contrib.auth.models import AbstractBaseUser
from django.db import models

from annotations.models import AuditEvent, Item


def audit_record(
    *,
    actor: AbstractBaseUser | None,
    verb: str,
    target: models.Model,
    before: dict | None = None,
    after: dict | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        verb=verb,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        before=before or {},
        after=after or {},
    )


def item_state(item: Item) -> dict:
    """The part of an item an audit trail needs to show a state change."""
    return {
        "status": item.status,
        "version": item.version,
        "approvals": item.approvals,
        "lease_owner": item.lease_owner_id,
    }


def auth_event_record(*, verb: str, user: AbstractBaseUser | None, username: str, request=None) -> AuditEvent:
    """A sign-in, sign-out, failed sign-in or token issued: who (or which name was tried) and from where.
    Never the password."""
    address = request.META.get("REMOTE_ADDR", "") if request is not None else ""
    return AuditEvent.objects.create(
        actor=user if user is not None and user.is_authenticated else None,
        verb=verb,
        target_type="auth.user",
        target_id=str(user.pk) if user is not None and user.pk else "",
        after={"username": username[:150], "address": address},
    )
