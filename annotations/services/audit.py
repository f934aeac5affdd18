from contextlib import contextmanager
from contextvars import ContextVar

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


# --- Who is acting, for changes recorded by signals (roles, account flags, domains: annotations/signals.py) ---
# The admin and other views change users and domains through plain model saves, which do not know the request;
# sora_web.security.AuditActorMiddleware names the request here, and its user is read when something is recorded.
_current_request: ContextVar = ContextVar("sora_audit_request", default=None)


@contextmanager
def request_acting(request):
    token = _current_request.set(request)
    try:
        yield
    finally:
        _current_request.reset(token)


def current_actor() -> AbstractBaseUser | None:
    """The signed-in user of the request being served, if any (None in a worker or a management command)."""
    request = _current_request.get()
    user = getattr(request, "user", None)
    return user if user is not None and user.is_authenticated else None


def access_change_record(
    *, verb: str, target: models.Model, before: dict, after: dict, gone_user_id: int | None = None
) -> AuditEvent:
    """A change to who may do what (roles, account flags, domain reviewers and settings, API tokens).
    `gone_user_id`: a user being deleted, who cannot be the event's actor even when they deleted themselves."""
    actor = current_actor()
    if actor is not None and gone_user_id is not None and actor.pk == gone_user_id:
        actor = None
    return audit_record(actor=actor, verb=verb, target=target, before=before, after=after)
