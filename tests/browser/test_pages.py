"""Pages in real Chromium under the Content-Security-Policy: they work, and the browser blocks nothing.

Playwright drives Debian's `chromium`; Django's live server serves the pages
(HTTP only: the WebSocket path is covered in tests/test_demo.py).
"""

import shutil

import pytest

from tests.test_demo import CHROMIUM_FLAGS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.csp_violations = []
        page.on("console", lambda m: "Content Security Policy" in m.text and page.csp_violations.append(m.text))
        yield page
        browser.close()


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
def hostile_item(domain):
    from tests.factories import ItemFactory

    return ItemFactory(domain=domain, draft=HOSTILE, input=HOSTILE)


def test_hostile_model_output_is_shown_as_text_and_runs_nothing(live_server, reviewer, hostile_item, browser_page):
    item = hostile_item
    page = browser_page
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", reviewer.username)
    page.fill("#id_password", "pass-for-tests-123")
    page.click("button[type=submit]")
    page.goto(f"{live_server.url}/items/{item.pk}/")

    assert page.text_content("#draft") == HOSTILE
    assert page.evaluate("window.pwned") is None
    assert page.csp_violations == []
