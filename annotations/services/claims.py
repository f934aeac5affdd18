"""Leases on items: claim the next one, keep it alive, give it back.

PostgreSQL: the claim is one SQL statement, two when expired leases wait
(claims_postgres.py); it locks the chosen row with SELECT … FOR UPDATE SKIP
LOCKED, so concurrent reviewers pass over each other's candidates instead of
queueing behind them. SQLite ignores
FOR UPDATE; there every transaction is BEGIN IMMEDIATE
(settings.SQLITE_OPTIONS), which serialises claim transactions, and the claim
runs through the ORM. On both, Claim's partial unique index (one open claim
per item) is the last line of defence.
"""

from contextlib import nullcontext
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone

from annotations.exceptions import InvalidInput, LeaseLost, NotAllowed
from annotations.models import Claim, Domain, Item
from annotations.selectors import claimable_items, domain_get_for_submission, domains_to_claim_from, expired_leases
from collab.events import item_group, send_event_on_commit

from . import claims_postgres
from .audit import audit_record, item_state

# Expired leases handed back per claim; the rest wait for the next claim.
_EXPIRED_PER_CLAIM = 50


def _lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.SORA_LEASE_SECONDS)


def item_status_changed(item: Item) -> None:
    _announce_status(item.pk, item.status, item.version)


def _announce_status(item_id: int, status: str, version: int) -> None:
    send_event_on_commit(item_group(item_id), "item.status", {"status": status, "version": version})


def _domains_to_claim_from(reviewer: AbstractBaseUser, slug: str | None, now: datetime) -> dict[int, Domain]:
    domains = {domain.pk: domain for domain in domains_to_claim_from(user=reviewer, now=now)}
    if slug:
        chosen = {pk: domain for pk, domain in domains.items() if domain.slug == slug}
        if not chosen:
            if domain_get_for_submission(slug=slug) is None:
                raise InvalidInput("domain", f"Unknown domain {slug!r}.")
            raise NotAllowed(f"You may not review the domain {slug!r}.")
        return chosen
    if not domains:
        raise NotAllowed("You may not review any domain.")
    return domains


def item_claim_next(*, reviewer: AbstractBaseUser, domain: str | None = None) -> Item | None:
    """Lease the best ready item (highest priority, then oldest) to `reviewer`; None when the queue is empty."""
    domains = _domains_to_claim_from(reviewer, domain, timezone.now())
    # Expired leases are handed back first so that they compete for this claim; only where the domain query saw some.
    expired_in = [pk for pk, found in domains.items() if found.has_expired_leases]
    claim = _claim_next_postgres if connection.vendor == "postgresql" else _claim_next_portable
    item = claim(reviewer=reviewer, domain_ids=list(domains), expired_in=expired_in, skipped_too=False)
    if item is None:
        # Items this reviewer skipped wait until nothing else is left for them: then they come back.
        item = claim(reviewer=reviewer, domain_ids=list(domains), expired_in=[], skipped_too=True)
    if item is not None:
        item.domain, item.lease_owner = domains[item.domain_id], reviewer
    return item


def _claim_next_postgres(
    *, reviewer: AbstractBaseUser, domain_ids: list[int], expired_in: list[int], skipped_too: bool
) -> Item | None:
    """The claim in SQL (claims_postgres.py). One statement is its own transaction, so BEGIN/COMMIT are only
    needed when a sweep of expired leases must commit together with the lease."""
    with transaction.atomic() if expired_in else nullcontext():
        now = timezone.now()
        for item_id, version in claims_postgres.sweep_expired(
            domain_ids=expired_in, now=now, sweep_limit=_EXPIRED_PER_CLAIM
        ):
            _announce_status(item_id, Item.Status.READY, version)
        item = claims_postgres.lease_next(
            reviewer_id=reviewer.pk, domain_ids=domain_ids, now=now, until=_lease_until(now), skipped_too=skipped_too
        )
        if item is not None:
            item_status_changed(item)
    return item


def _claim_next_portable(
    *, reviewer: AbstractBaseUser, domain_ids: list[int], expired_in: list[int], skipped_too: bool
) -> Item | None:
    """The claim through the ORM: SQLite, where BEGIN IMMEDIATE serialises claim transactions."""
    with transaction.atomic():
        now = timezone.now()  # inside: BEGIN IMMEDIATE may have waited for the lock
        if expired_in:
            _expire_leases(domain_ids=expired_in, now=now, limit=_EXPIRED_PER_CLAIM)
        candidates = claimable_items(user=reviewer, domain_ids=domain_ids, skipped_too=skipped_too)
        item = candidates.select_for_update(skip_locked=True).first()
        if item is None:
            return None
        before = item_state(item)
        item.status = Item.Status.IN_REVIEW
        item.lease_owner = reviewer
        item.lease_expires_at = _lease_until(now)
        item.version += 1
        item.save(update_fields=["status", "lease_owner", "lease_expires_at", "version", "updated_at"])
        Claim.objects.create(item=item, reviewer=reviewer, claimed_at=now, lease_expires_at=item.lease_expires_at)
        audit_record(actor=reviewer, verb="item.claimed", target=item, before=before, after=item_state(item))
        item_status_changed(item)
    return item


def leases_expire(*, limit: int = 1000) -> int:
    """Hand items whose lease ran out back to the queue; returns how many. Run periodically."""
    with transaction.atomic():
        return _expire_leases(domain_ids=None, now=timezone.now(), limit=limit)


def _expire_leases(*, domain_ids: list[int] | None, now: datetime, limit: int) -> int:
    stale = expired_leases(domain_ids=domain_ids, now=now).select_for_update(skip_locked=True)[:limit]
    count = 0
    for item in stale:
        _end_lease(item, actor=None, reason=Claim.EndReason.EXPIRED, now=now)
        count += 1
    return count


def lock_leased_item(*, item_id: int, reviewer: AbstractBaseUser, now: datetime) -> Item:
    """The item, row-locked, if `reviewer` holds a live lease on it; LeaseLost otherwise."""
    # of=("self",): lock the item only, not its domain row (every approval in a domain would queue on it).
    item = Item.objects.select_for_update(of=("self",)).select_related("domain").get(pk=item_id)
    if item.status != Item.Status.IN_REVIEW or item.lease_owner_id != reviewer.pk:
        raise LeaseLost("You do not hold a lease on this item.", status=item.status, version=item.version)
    if item.lease_expires_at <= now:
        raise LeaseLost("Your lease on this item has expired.", status=item.status, version=item.version)
    return item


@transaction.atomic
def item_heartbeat(*, item_id: int, reviewer: AbstractBaseUser) -> Item:
    """Extend the reviewer's lease. Not a state change: the version stays."""
    now = timezone.now()
    item = lock_leased_item(item_id=item_id, reviewer=reviewer, now=now)
    item.lease_expires_at = _lease_until(now)
    item.save(update_fields=["lease_expires_at", "updated_at"])
    Claim.objects.filter(item=item, ended_at__isnull=True).update(lease_expires_at=item.lease_expires_at)
    return item


@transaction.atomic
def item_release(*, item_id: int, reviewer: AbstractBaseUser, skip: bool = False) -> Item:
    """Give the item back to the queue; with `skip`, to the others first: this reviewer is offered it again
    only when nothing else is left for them."""
    now = timezone.now()
    item = lock_leased_item(item_id=item_id, reviewer=reviewer, now=now)
    _end_lease(item, actor=reviewer, reason=Claim.EndReason.SKIPPED if skip else Claim.EndReason.RELEASED, now=now)
    return item


def _end_lease(item: Item, *, actor: AbstractBaseUser | None, reason: str, now: datetime) -> None:
    before = item_state(item)
    Claim.objects.filter(item=item, ended_at__isnull=True).update(ended_at=now, end_reason=reason)
    item.status = Item.Status.READY
    item.lease_owner = None
    item.lease_expires_at = None
    item.version += 1
    item.save(update_fields=["status", "lease_owner", "lease_expires_at", "version", "updated_at"])
    verbs = {Claim.EndReason.EXPIRED: "item.lease_expired", Claim.EndReason.SKIPPED: "item.skipped"}
    verb = verbs.get(reason, "item.released")
    audit_record(actor=actor, verb=verb, target=item, before=before, after=item_state(item))
    item_status_changed(item)
