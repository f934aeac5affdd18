"""The metrics page: how reviews went per domain and model version, as a table and server-drawn SVG charts.

Thin: parse `days`, call the metrics selectors, shape their figures into display strings and charts.
"""

import re
from datetime import datetime, timedelta

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from . import charts, metrics

DEFAULT_DAYS = 30
MAX_DAYS = 365
_WHOLE_NUMBER = re.compile(r"[0-9]{1,6}")
DASH = "–"


def _days(raw: str | None) -> int | None:
    """The window in days: absent or empty means the default; None when it is not a whole number 1–365."""
    if raw is None or raw == "":
        return DEFAULT_DAYS
    if not _WHOLE_NUMBER.fullmatch(raw):
        return None
    days = int(raw)
    return days if 1 <= days <= MAX_DAYS else None


def _rate(value: float | None) -> str:
    return DASH if value is None else charts.percent(value)


def _decimal(value: float | None) -> str:
    return DASH if value is None else charts.decimal(value)


def _duration(ms: float | None) -> str:
    if ms is None:
        return DASH
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _per_hour(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f}"


def _table(rows: list[metrics.VersionMetrics]) -> list[dict]:
    return [
        {
            "domain_slug": row.domain_slug,
            "domain": row.domain_name,
            "version": row.version_label,
            "decisions": row.decisions,
            "approval_rate": _rate(row.approval_rate),
            "share_edited": _rate(row.share_edited),
            "mean_edit_distance": _decimal(row.mean_edit_distance),
            "median_time": _duration(row.median_time_to_review_ms),
            "items_per_hour": _per_hour(row.items_per_hour),
        }
        for row in rows
    ]


def _bar_groups(rows: list[metrics.VersionMetrics], figure: str) -> list[tuple[str, list]]:
    groups: dict[int, tuple[str, list]] = {}
    for row in rows:
        groups.setdefault(row.domain_id, (row.domain_name, []))[1].append((row.version_label, getattr(row, figure)))
    return list(groups.values())


def _version_legend(rows: list[metrics.VersionMetrics]) -> list[str]:
    """Every version once, oldest first (submitted drafts first), so colours follow the versions' age."""
    versions = {row.version_id: row for row in rows}
    return [row.version_label for row in sorted(versions.values(), key=metrics.version_age)]


def _charts(
    rows: list[metrics.VersionMetrics], daily: list[metrics.DailySeries], *, since: datetime, now: datetime
) -> dict:
    legend = _version_legend(rows)
    period = f"decisions in the last {(now - since).days} days"
    return {
        "edit_distance_chart": charts.bar_chart(
            _bar_groups(rows, "mean_edit_distance"),
            chart_id="chart-edit-distance",
            title="Mean edit distance per model version",
            description=(
                f"Per domain, the mean normalised word edit distance between each model version's drafts and the "
                f"approved text (0: approved unchanged, 1: rewritten), {period}. Lower is better."
            ),
            legend=legend,
        ),
        "share_edited_chart": charts.bar_chart(
            _bar_groups(rows, "share_edited"),
            chart_id="chart-share-edited",
            title="Share of drafts edited per model version",
            description=f"Per domain, the share of approved drafts that the reviewer changed, {period}.",
            value_format=charts.percent,
            legend=legend,
        ),
        "approval_rate_chart": charts.bar_chart(
            _bar_groups(rows, "approval_rate"),
            chart_id="chart-approval-rate",
            title="Approval rate per model version",
            description=f"Per domain, approvals as a share of all decisions on each version's drafts, {period}.",
            value_format=charts.percent,
            legend=legend,
        ),
        "trend_chart": charts.line_chart(
            [(series.domain_name, series.points) for series in daily],
            start=timezone.localdate(since),
            end=timezone.localdate(now),
            chart_id="chart-trend",
            title="Mean edit distance per day",
            description=f"Per domain, the mean normalised edit distance of each day's approvals, {period}.",
        ),
    }


@login_required
def metrics_page(request: HttpRequest) -> HttpResponse:
    if not metrics.can_view_metrics(request.user):
        raise PermissionDenied("The metrics page is for reviewers and model managers.")
    days = _days(request.GET.get("days"))
    context: dict = {"max_days": MAX_DAYS, "presets": (7, 30, 90, 365)}
    if days is None:
        context |= {"days": DEFAULT_DAYS, "error": f"“days” must be a whole number from 1 to {MAX_DAYS}."}
        return render(request, "annotations/metrics.html", context, status=400)
    now = timezone.now()
    since = now - timedelta(days=days)
    rows = metrics.review_metrics(user=request.user, since=since)
    daily = metrics.daily_edit_distance(user=request.user, since=since)
    context |= {"days": days, "since": since, "rows": _table(rows), **_charts(rows, daily, since=since, now=now)}
    return render(request, "annotations/metrics.html", context)
