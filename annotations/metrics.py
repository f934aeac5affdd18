"""Reads for the metrics page: how reviews went, per domain and per model version of the reviewed draft.

Every figure counts decisions (Review rows) made at or after `since`. A review's model version is
the version of the draft it was made on (Review.generation.model_version); None stands for drafts
no model wrote in this system (handed in with the item) and for reviews made without a finished draft.
docs/metrics.md defines each figure.

The page costs a constant number of queries, however many domains and versions there are:
one aggregate (counts and means, in SQL), one list of (group, reviewer, time, time spent) rows,
one aggregate for the daily series, and the user's roles.
"""

import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Avg, Count, Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from . import roles, selectors
from .models import Domain, Review

SUBMITTED_DRAFT = "submitted draft"

APPROVED = Q(decision=Review.Decision.APPROVE)


@dataclass(frozen=True)
class VersionMetrics:
    """The figures of one (domain, model version) pair over the window."""

    domain_id: int
    domain_slug: str
    domain_name: str
    version_id: int | None  # None: a submitted draft (no model wrote it here)
    version_name: str | None
    version_created_at: datetime | None
    decisions: int
    approvals: int
    edited: int
    mean_edit_distance: float | None  # over the approvals' corrections; None without approvals
    median_time_to_review_ms: float | None
    reviewer_hours: int  # distinct (reviewer, clock hour) pairs with a decision here

    @property
    def version_label(self) -> str:
        return self.version_name if self.version_name is not None else SUBMITTED_DRAFT

    @property
    def approval_rate(self) -> float | None:
        return self.approvals / self.decisions if self.decisions else None

    @property
    def share_edited(self) -> float | None:
        return self.edited / self.approvals if self.approvals else None

    @property
    def items_per_hour(self) -> float | None:
        return self.decisions / self.reviewer_hours if self.reviewer_hours else None


@dataclass(frozen=True)
class DailySeries:
    """Mean normalised edit distance of one domain's approvals, per day that had any."""

    domain_slug: str
    domain_name: str
    points: list[tuple[date, float]]


def can_view_metrics(user: AbstractBaseUser) -> bool:
    return roles.is_manager(user) or roles.has_role(user, roles.REVIEWER)


def metrics_domains(*, user: AbstractBaseUser) -> QuerySet[Domain]:
    """Managers and admins: every domain (inactive ones too: their history still counts).
    Reviewers: the domains they review. Anyone else: none."""
    if roles.is_manager(user):
        return Domain.objects.all()
    return selectors.domains_reviewable_by(user=user)


def _reviews_in_window(*, user: AbstractBaseUser, since: datetime) -> QuerySet[Review]:
    reviews = Review.objects.filter(created_at__gte=since)
    if roles.is_manager(user):
        return reviews
    return reviews.filter(item__domain__in=metrics_domains(user=user).values("id"))


def review_metrics(*, user: AbstractBaseUser, since: datetime) -> list[VersionMetrics]:
    """One entry per (domain, model version) with decisions since `since`, in domain slug order and,
    within a domain, submitted drafts first, then versions oldest first."""
    if not can_view_metrics(user):
        return []
    reviews = _reviews_in_window(user=user, since=since)
    group = ("item__domain_id", "generation__model_version_id")
    totals = (
        reviews.values(
            *group,
            "item__domain__slug",
            "item__domain__name",
            "generation__model_version__name",
            "generation__model_version__created_at",
        )
        .annotate(
            decisions=Count("id"),
            approvals=Count("id", filter=APPROVED),
            edited=Count("id", filter=APPROVED & Q(correction__edited=True)),
            mean_edit_distance=Avg("correction__edit_distance", filter=APPROVED),
        )
        .order_by()
    )

    # The median and the reviewer-hours have no portable SQL aggregate (SQLite has no percentile and no
    # COUNT(DISTINCT a, b)), so they are computed here, from one row per decision in the window.
    times: dict[tuple, list[int]] = defaultdict(list)
    hours: dict[tuple, set[tuple[int, datetime]]] = defaultdict(set)
    for domain_id, version_id, reviewer_id, created_at, spent_ms in reviews.values_list(
        *group, "reviewer_id", "created_at", "time_spent_ms"
    ).order_by():
        key = (domain_id, version_id)
        times[key].append(spent_ms)
        hours[key].add((reviewer_id, timezone.localtime(created_at).replace(minute=0, second=0, microsecond=0)))

    metrics = []
    for row in totals:
        key = (row["item__domain_id"], row["generation__model_version_id"])
        metrics.append(
            VersionMetrics(
                domain_id=key[0],
                domain_slug=row["item__domain__slug"],
                domain_name=row["item__domain__name"],
                version_id=key[1],
                version_name=row["generation__model_version__name"],
                version_created_at=row["generation__model_version__created_at"],
                decisions=row["decisions"],
                approvals=row["approvals"],
                edited=row["edited"],
                mean_edit_distance=row["mean_edit_distance"],
                median_time_to_review_ms=statistics.median(times[key]) if times[key] else None,
                reviewer_hours=len(hours[key]),
            )
        )
    metrics.sort(key=lambda entry: (entry.domain_slug, *version_age(entry)))
    return metrics


def version_age(entry: VersionMetrics) -> tuple:
    """A sort key: submitted drafts first, then model versions oldest first (by ModelVersion.created_at)."""
    created = entry.version_created_at
    return (created is not None, created or datetime.min.replace(tzinfo=UTC), entry.version_id or 0)


def daily_edit_distance(*, user: AbstractBaseUser, since: datetime) -> list[DailySeries]:
    """Per domain, the mean normalised edit distance of the approvals of each day (in the site's time zone)
    since `since`; days without approvals are left out. Domains in slug order."""
    if not can_view_metrics(user):
        return []
    rows = (
        _reviews_in_window(user=user, since=since)
        .filter(APPROVED, correction__isnull=False)
        .annotate(day=TruncDate("created_at"))
        .values("item__domain__slug", "item__domain__name", "day")
        .annotate(mean=Avg("correction__edit_distance"))
        .order_by("item__domain__slug", "day")
    )
    series: dict[str, DailySeries] = {}
    for row in rows:
        slug = row["item__domain__slug"]
        if slug not in series:
            series[slug] = DailySeries(domain_slug=slug, domain_name=row["item__domain__name"], points=[])
        series[slug].points.append((row["day"], row["mean"]))
    return list(series.values())
