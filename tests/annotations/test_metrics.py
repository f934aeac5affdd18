"""The metrics page: figures per domain and model version, who sees which, and what it costs."""

import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotations import metrics, services
from annotations.diffing import word_edit_distance
from annotations.models import Correction, Domain, Generation, Item, Review
from models_app.models import ModelVersion
from tests.factories import DomainFactory, ItemFactory, reviewer_factory

SVG = "{http://www.w3.org/2000/svg}"


def version(name: str, *, created_at: datetime | None = None) -> ModelVersion:
    made = ModelVersion.objects.create(name=name, base_model=f"/models/{name}")
    if created_at is not None:
        ModelVersion.objects.filter(pk=made.pk).update(created_at=created_at)
    return made


def decide(
    *,
    domain: Domain,
    reviewer,
    model: ModelVersion | None,
    at: datetime,
    spent_s: float,
    distance: float | None = None,
) -> Review:
    """A decision on a new item whose draft `model` wrote (None: a submitted draft): an approval with a
    correction at `distance` (edited when above 0), or a rejection when distance is None."""
    item = ItemFactory(domain=domain, with_generation=False)
    source = Generation.Source.SUBMITTED if model is None else Generation.Source.MODEL
    generation = Generation.objects.create(item=item, source=source, text=item.draft, model_version=model)
    approving = distance is not None
    review = Review.objects.create(
        item=item,
        reviewer=reviewer,
        generation=generation,
        decision=Review.Decision.APPROVE if approving else Review.Decision.REJECT,
        reason="" if approving else "Wrong facts.",
        item_version=item.version,
        time_spent_ms=int(spent_s * 1000),
    )
    Review.objects.filter(pk=review.pk).update(created_at=at)
    if approving:
        final = item.draft if distance == 0 else "Something else entirely."
        Correction.objects.create(
            item=item,
            review=review,
            generation=generation,
            domain=domain,
            draft=item.draft,
            final=final,
            diff=[],
            edit_distance=distance,
            edited=distance > 0,
        )
    return review


@pytest.fixture
def day():
    """10:00 two days ago (site time zone): every hand-built decision falls well inside the default window."""
    return timezone.localtime().replace(hour=10, minute=0, second=0, microsecond=0) - timedelta(days=2)


@pytest.fixture
def zeta(db) -> Domain:
    return DomainFactory(slug="zeta", name="Zeta news")


@pytest.fixture
def history(domain, zeta, reviewer, second_reviewer, day):
    """Two domains, two model versions (the older one created later, by id) and submitted drafts."""
    tuned = version("tuned", created_at=day)
    base = version("base", created_at=day - timedelta(days=30))
    hour = timedelta(hours=1)
    minutes = [timedelta(minutes=m) for m in range(60)]
    # domain / base: rita, 3 approvals (0, 0.3, 0.6) and a rejection over two clock hours
    decide(domain=domain, reviewer=reviewer, model=base, at=day + minutes[5], spent_s=10, distance=0.0)
    decide(domain=domain, reviewer=reviewer, model=base, at=day + minutes[15], spent_s=20, distance=0.3)
    decide(domain=domain, reviewer=reviewer, model=base, at=day + hour + minutes[5], spent_s=30, distance=0.6)
    decide(domain=domain, reviewer=reviewer, model=base, at=day + hour + minutes[25], spent_s=40)
    # domain / tuned, the next day: sam approves twice (0, 0.1), rita rejects once, all in one clock hour
    next_day = day + timedelta(days=1)
    decide(domain=domain, reviewer=second_reviewer, model=tuned, at=next_day + minutes[5], spent_s=5, distance=0.0)
    decide(domain=domain, reviewer=second_reviewer, model=tuned, at=next_day + minutes[10], spent_s=7, distance=0.1)
    decide(domain=domain, reviewer=reviewer, model=tuned, at=next_day + minutes[20], spent_s=9)
    # domain / submitted draft: one unchanged approval
    decide(domain=domain, reviewer=reviewer, model=None, at=day + minutes[30], spent_s=3, distance=0.0)
    # zeta / base: bo approves one (0.5) and rejects one
    bo = reviewer_factory(zeta, username="bo")
    decide(domain=zeta, reviewer=bo, model=base, at=day + minutes[1], spent_s=60, distance=0.5)
    decide(domain=zeta, reviewer=bo, model=base, at=day + minutes[2], spent_s=120)
    # outside the default 30-day window
    decide(domain=domain, reviewer=reviewer, model=base, at=day - timedelta(days=40), spent_s=1, distance=1.0)
    return {"base": base, "tuned": tuned, "bo": bo}


def figures(entry: metrics.VersionMetrics) -> tuple:
    return (
        entry.domain_slug,
        entry.version_label,
        entry.decisions,
        entry.approval_rate,
        entry.share_edited,
        entry.mean_edit_distance,
        entry.median_time_to_review_ms,
        entry.items_per_hour,
    )


def table(page: str) -> list[list[str]]:
    """The metrics table's cells, row by row; [] when the page has no table."""
    if '<table id="metrics">' not in page:
        return []
    body = page[page.index('<table id="metrics">') :].split("</table>")[0]
    rows = body.split("<tbody>")[1].split("</tr>")[:-1]
    return [[cell.strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in rows]


def svg(page: str, chart_id: str) -> ET.Element:
    start = page.index(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{chart_id}"')
    return ET.fromstring(page[start : page.index("</svg>", start) + len("</svg>")])


# --- the figures -------------------------------------------------------------------------------------


def test_figures_per_domain_and_model_version(manager, domain, history, day):
    since = timezone.now() - timedelta(days=30)

    result = [figures(entry) for entry in metrics.review_metrics(user=manager, since=since)]

    approx = pytest.approx
    assert result == [
        # submitted drafts first, then versions by creation time (base was created first, with the higher id)
        (domain.slug, "submitted draft", 1, 1.0, 0.0, approx(0.0), 3000, 1.0),
        (domain.slug, "base", 4, 0.75, approx(2 / 3), approx(0.3), 25000, 2.0),  # 4 decisions, 2 reviewer-hours
        (domain.slug, "tuned", 3, approx(2 / 3), 0.5, approx(0.05), 7000, 1.5),  # sam's hour and rita's hour
        ("zeta", "base", 2, 0.5, 1.0, approx(0.5), 90000, 2.0),
    ]


def test_a_version_with_only_rejections_has_no_edit_figures(manager, domain, reviewer, day):
    decide(domain=domain, reviewer=reviewer, model=version("v1"), at=day, spent_s=4)

    (entry,) = metrics.review_metrics(user=manager, since=day - timedelta(days=1))

    assert (entry.approval_rate, entry.share_edited, entry.mean_edit_distance) == (0.0, None, None)


def test_the_daily_series_is_the_mean_edit_distance_of_each_days_approvals(manager, domain, history, day):
    since = timezone.now() - timedelta(days=30)

    series = metrics.daily_edit_distance(user=manager, since=since)

    assert [(s.domain_slug, [(d, round(v, 4)) for d, v in s.points]) for s in series] == [
        # day: base 0, 0.3, 0.6 and the submitted draft's 0; the next day: tuned 0 and 0.1
        (domain.slug, [(day.date(), 0.225), ((day + timedelta(days=1)).date(), 0.05)]),
        ("zeta", [(day.date(), 0.5)]),
    ]


def test_reviews_made_through_the_services_count_for_the_model_version_that_wrote_the_draft(manager, reviewer, domain):
    tuned = version("tuned")
    item = ItemFactory(domain=domain, with_generation=False, draft="Your parcel is on its way.")
    Generation.objects.create(item=item, source=Generation.Source.MODEL, text=item.draft, model_version=tuned)
    claimed = services.item_claim_next(reviewer=reviewer)
    final = "Your parcel left our depot today."

    services.review_submit(
        item_id=item.pk, reviewer=reviewer, decision="approve", version=claimed.version, final_text=final
    )

    (entry,) = metrics.review_metrics(user=manager, since=timezone.now() - timedelta(hours=1))
    assert (entry.version_label, entry.decisions, entry.share_edited) == ("tuned", 1, 1.0)
    assert entry.mean_edit_distance == pytest.approx(word_edit_distance(item.draft, final))
    assert entry.items_per_hour == 1.0


# --- who sees what -----------------------------------------------------------------------------------


def test_a_reviewer_sees_only_the_domains_they_review(client, reviewer, domain, history):
    client.force_login(reviewer)

    page = client.get("/metrics/").content.decode()

    assert [row[:3] for row in table(page)] == [
        [domain.name, "submitted draft", "1"],
        [domain.name, "base", "4"],
        [domain.name, "tuned", "3"],
    ]
    assert "Zeta news" not in page


def test_a_manager_sees_every_domain_with_its_figures_formatted(client, manager, domain, history):
    client.force_login(manager)

    page = client.get("/metrics/").content.decode()

    assert table(page) == [
        [domain.name, "submitted draft", "1", "100%", "0%", "0.00", "3.0 s", "1.0"],
        [domain.name, "base", "4", "75%", "67%", "0.30", "25.0 s", "2.0"],
        [domain.name, "tuned", "3", "67%", "50%", "0.05", "7.0 s", "1.5"],
        ["Zeta news", "base", "2", "50%", "100%", "0.50", "1 min 30 s", "2.0"],
    ]
    assert 'href="/"' in page


def test_an_admin_sees_every_domain(client, admin_user, domain, history):
    client.force_login(admin_user)

    rows = table(client.get("/metrics/").content.decode())

    assert {row[0] for row in rows} == {domain.name, "Zeta news"}


def test_the_fine_tuning_chart_draws_a_bar_per_domain_and_version(client, manager, history):
    client.force_login(manager)

    page = client.get("/metrics/").content.decode()

    chart = svg(page, "chart-edit-distance")
    assert chart.find(SVG + "title").text == "Mean edit distance per model version"
    values = [text.text for text in chart.iter(SVG + "text") if text.get("class") == "value"]
    assert values == ["0.00", "0.30", "0.05", "0.50"]
    legend = [g.find(SVG + "text").text for g in chart.iter(SVG + "g") if g.get("class") == "legend-entry"]
    assert legend == ["submitted draft", "base", "tuned"]
    for chart_id, bars in (("chart-share-edited", 4), ("chart-approval-rate", 4)):
        assert len([r for r in svg(page, chart_id).iter(SVG + "rect") if r.get("class") == "bar"]) == bars
    trend = svg(page, "chart-trend")
    assert len([c for c in trend.iter(SVG + "circle") if c.get("class") == "point"]) == 3


def test_hostile_domain_and_model_names_are_shown_as_text(client, manager, day):
    hostile = DomainFactory(slug="hostile", name="<script>alert(1)</script>")
    decide(
        domain=hostile, reviewer=manager, model=version("<img src=x onerror=alert(2)>"), at=day, spent_s=1, distance=0.2
    )
    client.force_login(manager)

    page = client.get("/metrics/").content.decode()

    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert table(page)[0][:2] == ["&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;img src=x onerror=alert(2)&gt;"]
    label = svg(page, "chart-edit-distance").find(f".//{SVG}text[@class='group']")
    assert label.find(SVG + "title").text == hostile.name  # in full; the label itself may be shortened


def test_a_reviewer_without_reviews_sees_that_there_are_none(client, reviewer):
    client.force_login(reviewer)

    response = client.get("/metrics/")

    page = response.content.decode()
    assert response.status_code == 200
    assert '<p id="metrics">No reviews in this period.</p>' in page
    assert "<svg" not in page
    assert page.count('class="chart-empty"') == 4


def test_a_user_with_neither_role_is_refused(client, integration):
    client.force_login(integration)

    assert client.get("/metrics/").status_code == 403


def test_anonymous_visitors_are_sent_to_sign_in(client, db):
    response = client.get("/metrics/")

    assert (response.status_code, response["Location"]) == (302, "/accounts/login/?next=/metrics/")


# --- the period -------------------------------------------------------------------------------------


@pytest.mark.parametrize("days", ["0", "366", "abc", "-1", "1.5", "30 ", "9999999999"])
def test_a_period_outside_1_to_365_days_is_a_clear_bad_request(client, manager, days):
    client.force_login(manager)

    response = client.get("/metrics/", {"days": days})

    assert response.status_code == 400
    assert "must be a whole number from 1 to 365" in response.content.decode()


def test_the_period_chooses_which_decisions_count(client, manager, domain, history):
    client.force_login(manager)

    def base_decisions(**params) -> list[str]:
        rows = table(client.get("/metrics/", params).content.decode())
        return [row[2] for row in rows if row[1] == "base"]

    assert base_decisions() == ["4", "2"]  # default: the last 30 days
    assert base_decisions(days="365") == ["5", "2"]  # and the decision from 42 days ago
    assert base_decisions(days="1") == []  # every base decision is more than a day old


# --- cost -------------------------------------------------------------------------------------------


def test_the_page_costs_the_same_queries_however_many_domains_and_versions(client, manager, day):
    client.force_login(manager)

    def grow(domains: int, versions: int) -> int:
        for _ in range(domains):
            target = DomainFactory()
            reviewer = reviewer_factory(target)
            for v in range(versions):
                model = version(f"{target.slug}-v{v}")
                decide(
                    domain=target, reviewer=reviewer, model=model, at=day + timedelta(hours=v), spent_s=5, distance=0.1
                )
                decide(domain=target, reviewer=reviewer, model=model, at=day + timedelta(hours=v), spent_s=6)
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/metrics/").status_code == 200
        return len(queries)

    small = grow(1, 1)
    large = grow(4, 3)

    assert large == small
    assert len(table(client.get("/metrics/").content.decode())) == 1 + 4 * 3
    assert Item.objects.count() == 2 * (1 + 4 * 3)
