"""Real Chromium (Debian's `chromium`, driven by Playwright) for the browser tests.

Playwright's sync API runs an event loop in the test's thread, and Django
refuses database calls made while one runs: create data in fixtures that come
before `browser`, and touch the database mid-test through `in_thread`.
"""

import shutil
import threading

import pytest
from django.db import connections

PASSWORD = "pass-for-tests-123"
# The flags the machine notes give for Debian's chromium in a container.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def browser_page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.csp_violations = []
    page.on("console", lambda m: "Content Security Policy" in m.text and page.csp_violations.append(m.text))
    return page


def sign_in(page, base_url: str, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")


def in_thread(function, *args, **kwargs):
    """Run a database call outside Playwright's event loop; returns its result."""
    result = {}

    def run():
        try:
            result["value"] = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the test's thread)
            result["error"] = exc
        finally:
            connections.close_all()  # this thread's connections: an open one could hold SQLite's write lock

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")
