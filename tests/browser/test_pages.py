"""Pages in real Chromium under the Content-Security-Policy: they work, and the browser blocks nothing.

Playwright drives Debian's `chromium`; Django's live server serves the pages
(HTTP only). The review screen has its own file, test_review.py.
"""

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
