"""The review screen against the whole stack: `sora_serve` with Daphne, a real Celery inference worker
and the embedded Redis, the tiny model writing drafts. A reviewer works the customer_service queue with
the keyboard while drafts stream in over the live channel, and a second person sees who holds the item.

`SORA_SCREENSHOT_DIR=docs pytest tests/browser/test_review_stack.py` refreshes the README's screenshot.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.browser.conftest import CHROMIUM_FLAGS
from tests.test_demo import ROOT, http_json, running_stack

pytestmark = [pytest.mark.slow, pytest.mark.browser]

EDIT = " Your order number is in the e-mail we sent this morning."

# Timestamps of the approve key and of the next item appearing, taken inside the page.
RECORD_SWITCH = """() => {
    window.switchTimes = {};
    document.addEventListener("keydown", (e) => { if (e.key === "a") window.switchTimes.key = performance.now(); },
                              {capture: true});
    new MutationObserver(() => { window.switchTimes.shown = window.switchTimes.shown || performance.now(); })
        .observe(document.getElementById("item-id"), {childList: true, characterData: true, subtree: true});
}"""
# Every length the editor shows while a draft streams in, sampled each animation frame.
RECORD_LENGTHS = """() => {
    const editor = document.getElementById("editor");
    window.draftLengths = [];
    const sample = () => {
        const last = window.draftLengths[window.draftLengths.length - 1];
        if (editor.value.length !== last) window.draftLengths.push(editor.value.length);
        requestAnimationFrame(sample);
    };
    sample();
}"""


EXPIRE_LEASE = """
from datetime import timedelta
from django.utils import timezone
from annotations.models import Claim, Item
past = timezone.now() - timedelta(seconds=1)
Item.objects.filter(pk={item_id}).update(lease_expires_at=past)
Claim.objects.filter(item_id={item_id}, ended_at__isnull=True).update(lease_expires_at=past)
"""


def manage(stack, *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=stack.env, check=True, capture_output=True)


def sign_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-demo")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def test_a_reviewer_works_the_queue_with_streaming_drafts_and_the_keyboard(tmp_path, tiny_model_dir):
    with running_stack(tmp_path, tiny_model_dir) as stack, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        violations = []
        page.on("console", lambda m: "Content Security Policy" in m.text and violations.append(m.text))
        sign_in(page, stack.base, "reviewer")

        # The home page leads to the domain's queue; the first item is claimed and shown.
        page.click("#domains a[href='/review/customer_service/']")
        expect(page.locator("#workspace")).to_be_visible()
        expect(page.locator("#viewers")).to_have_text("reviewer")  # the live channel is connected
        first = page.text_content("#item-id")
        seeded_draft = page.input_value("#editor")
        assert seeded_draft

        # Edit with the keyboard; the diff marks the insertion.
        page.keyboard.press("e")
        page.keyboard.press("End")
        page.keyboard.type(EDIT)
        page.keyboard.press("Escape")
        expect(page.locator("#diff ins")).to_have_text(EDIT.strip())
        if os.environ.get("SORA_SCREENSHOT_DIR"):
            page.screenshot(path=str(Path(os.environ["SORA_SCREENSHOT_DIR"]) / "review-screen.png"))

        # Approve: the prefetched next item is on screen as soon as the server has the decision.
        page.evaluate(RECORD_SWITCH)
        page.keyboard.press("a")
        expect(page.locator("#notice")).to_have_text(f"Approved with your edits: item {first}.")
        second = page.text_content("#item-id")
        assert second != first
        switch = page.evaluate("window.switchTimes")
        print(f"approve key → next item shown: {switch['shown'] - switch['key']:.0f} ms")

        # Regenerate: the draft streams into the editor (read-only meanwhile), then it is editable again.
        expect(page.locator("#viewers")).to_have_text("reviewer")
        page.evaluate(RECORD_LENGTHS)
        page.keyboard.press("g")
        expect(page.locator("#message")).to_have_text("Written by tiny-llama.", timeout=60_000)
        lengths = page.evaluate("window.draftLengths")
        streamed = page.input_value("#editor")
        assert page.get_attribute("#editor", "readonly") is None
        expect(page.locator("#diff")).to_have_text("No changes to the draft.")

        # A second person opens the same item: read-only, with the holder's name; both see each other.
        other = browser.new_page()
        sign_in(other, stack.base, "reviewer2")
        other.goto(f"{stack.base}/items/{second}/")
        expect(other.locator("#holder")).to_contain_text("reviewer is reviewing this item")
        expect(other.locator("#editor")).to_have_value(streamed)
        expect(other.locator("#approve")).to_be_disabled()
        expect(page.locator("#viewers")).to_have_text("reviewer, reviewer2")

        # Reject with a reason, by keyboard: the holder moves on, the watcher sees the item decided.
        page.keyboard.press("r")
        page.keyboard.type("The reply does not answer the question.")
        page.keyboard.press("Enter")
        expect(page.locator("#notice")).to_have_text(f"Rejected: item {second}.")
        expect(other.locator("#status")).to_have_text("rejected")
        expect(other.locator("#holder")).to_contain_text("This item is rejected")
        third = page.text_content("#item-id")

        # The lease on the third item lapses while the reviewer types; reviewer2 takes it and regenerates.
        # The reviewer's page says so at once, and the new draft streaming in does not erase the typed text.
        page.keyboard.press("e")
        page.keyboard.press("End")
        page.keyboard.type(" Typed while the lease ran out.")
        page.keyboard.press("Escape")
        typed = page.input_value("#editor")
        manage(stack, "shell", "-c", EXPIRE_LEASE.format(item_id=third))
        _, token2 = http_json(
            f"{stack.base}/api/v1/auth/token/", {"username": "reviewer2", "password": "reviewer2-demo"}
        )
        status, taken = http_json(f"{stack.base}/api/v1/queue/claim/", {}, token=token2["token"])
        assert (status, str(taken["id"])) == (200, third)
        status, _ = http_json(f"{stack.base}/api/v1/items/{third}/generate/", {}, token=token2["token"])
        assert status == 202
        expect(page.locator("#banner-text")).to_contain_text("This item left your hands")
        expect(page.locator("#message")).to_have_text("Written by tiny-llama.", timeout=60_000)
        expect(page.locator("#kept-text")).to_have_text(typed)
        expect(page.locator("#approve")).to_be_disabled()
        browser.close()

        _, token = http_json(f"{stack.base}/api/v1/auth/token/", {"username": "reviewer", "password": "reviewer-demo"})
        _, approved = http_json(f"{stack.base}/api/v1/items/{first}/", token=token["token"])
        _, rejected = http_json(f"{stack.base}/api/v1/items/{second}/", token=token["token"])

    assert (approved["status"], approved["final_text"]) == ("approved", seeded_draft + EDIT)
    assert rejected["status"] == "rejected"
    assert rejected["reviews"][-1]["reason"] == "The reply does not answer the question."
    assert rejected["draft"] == streamed  # the streamed draft is the one that was reviewed
    assert [g["model_version"] for g in rejected["generations"]][-1] == "tiny-llama"
    # lengths[0] is the draft before; then the new one shown in part first: streamed, not swapped in at the end
    assert len(lengths) >= 3 and lengths[1] < lengths[-1] == len(streamed), lengths
    assert third not in (first, second)
    assert violations == []
