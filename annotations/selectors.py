"""Reads. `_for_user` selectors check permissions and raise, so a view cannot forget to."""

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Exists, Max, OuterRef, Prefetch, Q, QuerySet

from . import roles
from .exceptions import NotFound
from .models import Claim, Domain, Generation, Item, Review


def domains_reviewable_by(*, user: AbstractBaseUser) -> QuerySet[Domain]:
    if not roles.has_role(user, roles.REVIEWER):
        return Domain.objects.none()
    domains = Domain.objects.filter(is_active=True)
    if not roles.is_admin(user):
        domains = domains.filter(reviewers=user)
    return domains


def domains_to_claim_from(*, user: AbstractBaseUser, now: datetime) -> QuerySet[Domain]:
    """The domains this reviewer may claim from, each flagged `has_expired_leases`.

    The flag rides on the query a claim needs anyway, so the claim sweeps expired
    leases only where there are some (most claims find none and skip the sweep)."""
    expired_here = Item.objects.filter(domain=OuterRef("pk"), status=Item.Status.IN_REVIEW, lease_expires_at__lte=now)
    return domains_reviewable_by(user=user).annotate(has_expired_leases=Exists(expired_here))


def domain_get_for_submission(*, slug: str) -> Domain | None:
    return Domain.objects.filter(slug=slug, is_active=True).first()


def _visible_items(*, user: AbstractBaseUser) -> QuerySet[Item]:
    """Managers and admins see everything; reviewers their domains; integrations what they submitted."""
    items = Item.objects.all()
    if roles.sees_all_items(user):
        return items
    visible = Q(pk__in=[])
    if roles.has_role(user, roles.REVIEWER):
        visible |= Q(domain_id__in=domains_reviewable_by(user=user).values("id"))
    if roles.has_role(user, roles.INTEGRATION):
        visible |= Q(submitted_by=user)
    return items.filter(visible)


def item_list(*, user: AbstractBaseUser, filters: dict) -> QuerySet[Item]:
    items = _visible_items(user=user).select_related("domain", "lease_owner")
    if filters.get("domain"):
        items = items.filter(domain__slug=filters["domain"])
    if filters.get("status"):
        items = items.filter(status=filters["status"])
    if filters.get("external_id"):
        items = items.filter(external_id=filters["external_id"])
    return items.order_by("-created_at", "-id")


def item_get_for_user(*, user: AbstractBaseUser, item_id: int, detail: bool = False) -> Item:
    items = _visible_items(user=user).select_related("domain", "lease_owner")
    if detail:
        items = items.prefetch_related(
            Prefetch("generations", queryset=Generation.objects.select_related("model_version")),
            Prefetch("reviews", queryset=Review.objects.select_related("reviewer")),
        )
    item = items.filter(pk=item_id).first()
    if item is None:
        raise NotFound("Item not found.")
    return item


def claimable_items(*, user: AbstractBaseUser, domain_ids: list[int], skipped_too: bool = False) -> QuerySet[Item]:
    """Ready items of these domains that this reviewer has not already approved (nor skipped, unless
    `skipped_too`), best first."""
    approved_by_user = Review.objects.filter(item=OuterRef("pk"), reviewer=user, decision=Review.Decision.APPROVE)
    items = Item.objects.filter(domain_id__in=domain_ids, status=Item.Status.READY).filter(
        Q(approvals=0) | ~Exists(approved_by_user)
    )
    if not skipped_too:
        skipped_by_user = Claim.objects.filter(item=OuterRef("pk"), reviewer=user, end_reason=Claim.EndReason.SKIPPED)
        items = items.filter(~Exists(skipped_by_user))
    return items.order_by("-priority", "created_at", "id")


def expired_leases(*, domain_ids: list[int] | None, now: datetime) -> QuerySet[Item]:
    items = Item.objects.filter(status=Item.Status.IN_REVIEW, lease_expires_at__lte=now)
    if domain_ids is not None:
        items = items.filter(domain_id__in=domain_ids)
    return items.order_by("lease_expires_at")


def domain_queue_counts(*, user: AbstractBaseUser, since: datetime) -> QuerySet[Domain]:
    """The reviewer's domains, each with `ready`, `in_review` and `approved_since` counts, in one query."""
    return domains_reviewable_by(user=user).annotate(
        ready=Count("items", filter=Q(items__status=Item.Status.READY)),
        in_review=Count("items", filter=Q(items__status=Item.Status.IN_REVIEW)),
        approved_since=Count("items", filter=Q(items__status=Item.Status.APPROVED, items__updated_at__gte=since)),
    )


def reviews_recent_by(*, user: AbstractBaseUser, limit: int = 10) -> QuerySet[Review]:
    return (
        Review.objects.filter(reviewer=user)
        .select_related("item__domain", "correction")
        .order_by("-created_at", "-id")[:limit]
    )


def items_leased_to(*, user: AbstractBaseUser, domain: Domain, now: datetime) -> QuerySet[Item]:
    """The items of `domain` this reviewer holds a live lease on, first claimed first (the dashboard resumes them)."""
    return (
        Item.objects.filter(domain=domain, status=Item.Status.IN_REVIEW, lease_owner=user, lease_expires_at__gt=now)
        .select_related("domain", "lease_owner")
        .annotate(claimed_at=Max("claims__claimed_at", filter=Q(claims__ended_at__isnull=True)))
        .order_by("claimed_at", "id")
    )


def domain_get_for_reviewer(*, user: AbstractBaseUser, slug: str) -> Domain:
    domain = domains_reviewable_by(user=user).filter(slug=slug).first()
    if domain is None:
        raise NotFound("You do not review a domain of that name.")
    return domain
