"""Pages in real Chromium under the Content-Security-Policy: they work, and the browser blocks nothing.

Playwright drives Debian's `chromium`; Django's live server serves the pages
(HTTP only). The review screen has its own file, test_review.py.
"""

import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Data fixtures come before `browser_page`: Playwright's sync API runs an event loop in this thread, and
# Django refuses database calls made while one runs.


def test_the_admin_works_under_the_policy(live_server, admin_user, browser_page):
    page = browser_page
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", admin_user.username)
    page.fill("#id_password", "pass-for-tests-123")
    page.click("input[type=submit]")
    page.goto(f"{live_server.url}/admin/annotations/domain/add/")  # a form with the admin's scripts

    assert page.title().startswith("Add domain")
    assert page.csp_violations == []


def test_the_api_docs_render_under_the_policy(live_server, browser_page):
    page = browser_page
    page.goto(f"{live_server.url}/api/docs/")
    page.wait_for_selector(".swagger-ui .info .title")

    assert "Sora API" in page.text_content(".swagger-ui .info .title")
    assert page.csp_violations == []


@pytest.fixture
def decided_items(domain, reviewer):
    from annotations import services
    from tests.factories import ItemFactory

    for n in range(4):
        item = ItemFactory(domain=domain, draft=f"Draft number {n}.")
        claimed = services.item_claim_next(reviewer=reviewer)
        edited = f"Draft number {n}, edited." if n % 2 else None
        services.review_submit(
            item_id=item.pk, reviewer=reviewer, decision="approve", version=claimed.version, final_text=edited
        )


def test_the_metrics_page_draws_its_charts_under_the_policy(live_server, manager, decided_items, browser_page):
    page = browser_page
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", manager.username)
    page.fill("#id_password", "pass-for-tests-123")
    page.click("button[type=submit]")
    page.goto(f"{live_server.url}/metrics/")

    assert page.locator("svg#chart-edit-distance rect").count() >= 1
    assert page.locator("svg#chart-edit-distance").bounding_box()["width"] > 200  # drawn, not collapsed
    assert "50%" in page.text_content("table")  # half the drafts were edited
    if os.environ.get("SORA_SCREENSHOT_DIR"):
        page.set_viewport_size({"width": 1280, "height": 1000})
        page.screenshot(path=str(Path(os.environ["SORA_SCREENSHOT_DIR"]) / "metrics-page.png"), full_page=True)
    assert page.csp_violations == []
