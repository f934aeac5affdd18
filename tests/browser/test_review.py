"""The review screen in real Chromium, against Django's live server (HTTP; no live channel here).

The full loop with a real worker streaming drafts over the WebSocket is in
test_review_stack.py; these cover the keyboard, the queue, conflicts, read-only
viewing and hostile text, each in a few seconds.
"""

from datetime import timedelta

import pytest
from django.db.models import F
from django.utils import timezone
from playwright.sync_api import expect

from annotations.models import Correction, Item, Review
from annotations.services import item_claim_next
from tests.browser.conftest import in_thread, sign_in
from tests.factories import ItemFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HOSTILE = (
    '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    '<a href="javascript:window.pwned = 3">click</a>'
)


def queue(domain, count: int) -> list[Item]:
    """`count` ready items, oldest first (the order the queue hands them out)."""
    items = []
    for n in range(count):
        items.append(ItemFactory(domain=domain, input=f"Message {n}: where is my parcel?", draft=f"Draft {n}."))
        Item.objects.filter(pk=items[-1].pk).update(created_at=timezone.now() - timedelta(minutes=count - n))
    return items


def open_queue(page, live_server, reviewer, domain):
    sign_in(page, live_server.url, reviewer.username)
    page.goto(f"{live_server.url}/review/{domain.slug}/")
    expect(page.locator("#workspace")).to_be_visible()


@pytest.fixture
def three_items(domain):
    return queue(domain, 3)


def test_a_reviewer_works_through_the_queue_with_the_keyboard_alone(
    live_server, reviewer, domain, three_items, browser_page
):
    page = browser_page
    first, second, third = three_items
    open_queue(page, live_server, reviewer, domain)
    expect(page.locator("#item-id")).to_have_text(str(first.pk))
    expect(page.locator("#input")).to_have_text(first.input)
    expect(page.locator("#editor")).to_have_value("Draft 0.")

    # E edits, typing changes the diff, Esc leaves the editor, A approves: the next item is on screen.
    page.keyboard.press("e")
    expect(page.locator("#editor")).to_be_focused()
    page.keyboard.press("End")
    page.keyboard.type(" Sorry for the wait!")
    expect(page.locator("#diff ins")).to_have_text("Sorry for the wait!")
    expect(page.locator("#approve")).to_contain_text("Approve with edits")
    page.keyboard.press("Escape")
    expect(page.locator("#review")).to_be_focused()
    page.keyboard.press("a")
    expect(page.locator("#item-id")).to_have_text(str(second.pk))
    expect(page.locator("#notice")).to_have_text(f"Approved with your edits: item {first.pk}.")
    expect(page.locator("#editor")).to_have_value("Draft 1.")
    expect(page.locator("#diff")).to_have_text("No changes to the draft.")
    expect(page.locator("#review")).to_be_focused()  # focus is back where the shortcuts work

    # R asks for a reason, Enter rejects.
    page.keyboard.press("r")
    expect(page.locator("#reject-reason")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#reject-error")).to_have_text("A rejection needs a reason.")
    page.keyboard.type("Promises a refund we do not offer.")
    page.keyboard.press("Enter")
    expect(page.locator("#item-id")).to_have_text(str(third.pk))

    # Ctrl+Enter approves from inside the editor; the queue is then empty.
    page.keyboard.press("e")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#notice")).to_have_text(f"Approved: item {third.pk}.")
    assert page.csp_violations == []

    reviews = in_thread(lambda: list(Review.objects.order_by("id").values_list("item_id", "decision", "final_text")))
    assert reviews == [
        (first.pk, "approve", "Draft 0. Sorry for the wait!"),
        (second.pk, "reject", "Draft 1."),
        (third.pk, "approve", "Draft 2."),
    ]
    assert in_thread(lambda: Review.objects.get(item=second).reason) == "Promises a refund we do not offer."


def test_the_next_item_is_claimed_while_the_current_one_is_reviewed(
    live_server, reviewer, domain, three_items, browser_page
):
    page = browser_page
    first, second, _ = three_items
    open_queue(page, live_server, reviewer, domain)
    expect(page.locator("#item-id")).to_have_text(str(first.pk))

    def held():
        return set(Item.objects.filter(lease_owner=reviewer, status="in_review").values_list("pk", flat=True))

    page.wait_for_timeout(300)
    assert in_thread(held) == {first.pk, second.pk}  # prefetched: claimed before any decision

    page.reload()  # a reload resumes the same two items instead of claiming more
    expect(page.locator("#item-id")).to_have_text(str(first.pk))
    page.wait_for_timeout(300)
    assert in_thread(held) == {first.pk, second.pk}

    page.keyboard.press("n")  # skip gives the first back
    expect(page.locator("#item-id")).to_have_text(str(second.pk))
    page.wait_for_timeout(300)
    assert first.pk not in in_thread(held)


def test_a_save_the_server_refuses_keeps_the_text_and_offers_copy_and_reload(
    live_server, reviewer, domain, three_items, browser_page
):
    page = browser_page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    first = three_items[0]
    open_queue(page, live_server, reviewer, domain)
    page.keyboard.press("e")
    page.keyboard.press("End")
    page.keyboard.type(" My careful edit.")
    page.keyboard.press("Escape")

    # Someone changes the item meanwhile: the version the page knows is stale.
    in_thread(lambda: Item.objects.filter(pk=first.pk).update(version=F("version") + 1))
    page.keyboard.press("a")

    expect(page.locator("#banner")).to_be_visible()
    expect(page.locator("#banner-text")).to_contain_text("Not saved: The item changed since version")
    expect(page.locator("#editor")).to_have_value("Draft 0. My careful edit.")
    expect(page.locator("#copy-text")).to_be_focused()
    expect(page.locator("#approve")).to_be_disabled()

    page.keyboard.press("c")
    expect(page.locator("#notice")).to_have_text("Your text is on the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == "Draft 0. My careful edit."

    page.keyboard.press("l")  # reload: still our lease, so the text goes back into the editor on the new version
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#editor")).to_have_value("Draft 0. My careful edit.")
    page.keyboard.press("a")
    expect(page.locator("#notice")).to_have_text(f"Approved with your edits: item {first.pk}.")
    assert in_thread(lambda: Item.objects.get(pk=first.pk).final_text) == "Draft 0. My careful edit."


def test_a_lost_lease_keeps_the_text_beside_the_item_after_reload(
    live_server, reviewer, second_reviewer, domain, three_items, browser_page
):
    page = browser_page
    first = three_items[0]
    open_queue(page, live_server, reviewer, domain)
    page.keyboard.press("e")
    page.keyboard.press("Control+a")
    page.keyboard.type("Rewritten from scratch.")
    page.keyboard.press("Escape")

    def lease_runs_out_and_sam_claims_it():
        Item.objects.filter(pk=first.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
        Item.objects.exclude(pk=first.pk).update(priority=-1)  # so that sam's claim takes this one
        return item_claim_next(reviewer=second_reviewer)

    assert in_thread(lease_runs_out_and_sam_claims_it).pk == first.pk
    page.keyboard.press("a")
    expect(page.locator("#banner-text")).to_contain_text("Not saved: You do not hold a lease on this item.")
    page.keyboard.press("l")

    expect(page.locator("#holder")).to_contain_text("sam is reviewing this item")
    expect(page.locator("#kept-text")).to_have_text("Rewritten from scratch.")
    expect(page.locator("#editor")).to_have_attribute("readonly", "")


def test_an_item_someone_else_holds_is_read_only_with_their_name(
    live_server, reviewer, second_reviewer, domain, three_items, browser_page
):
    held = in_thread(lambda: item_claim_next(reviewer=second_reviewer))
    page = browser_page
    sign_in(page, live_server.url, reviewer.username)
    page.goto(f"{live_server.url}/items/{held.pk}/")

    expect(page.locator("#holder")).to_contain_text("sam is reviewing this item")
    expect(page.locator("#editor")).to_have_attribute("readonly", "")
    for button in ("#approve", "#reject", "#edit", "#generate"):
        expect(page.locator(button)).to_be_disabled()
    page.keyboard.press("a")
    page.wait_for_timeout(200)
    assert in_thread(lambda: Review.objects.count()) == 0


def test_the_help_overlay_opens_with_question_mark_and_closes_with_escape(
    live_server, reviewer, domain, three_items, browser_page
):
    page = browser_page
    open_queue(page, live_server, reviewer, domain)
    page.keyboard.press("?")
    expect(page.locator("#help")).to_be_visible()
    expect(page.locator("#help")).to_contain_text("Approve the text as it stands")
    page.keyboard.press("a")  # shortcuts sleep while the overlay is open
    page.keyboard.press("Escape")
    expect(page.locator("#help")).to_be_hidden()
    expect(page.locator("#review")).to_be_focused()
    assert in_thread(lambda: Review.objects.count()) == 0


@pytest.fixture
def hostile_item(domain):
    return ItemFactory(
        domain=domain, draft=HOSTILE, input=HOSTILE, metadata={HOSTILE: HOSTILE, "link": "javascript:alert(1)"}
    )


def test_hostile_input_and_draft_are_shown_as_text_and_run_nothing(
    live_server, reviewer, hostile_item, domain, browser_page
):
    page = browser_page
    open_queue(page, live_server, reviewer, domain)

    expect(page.locator("#input")).to_have_text(HOSTILE)
    expect(page.locator("#editor")).to_have_value(HOSTILE)
    expect(page.locator("#metadata")).to_contain_text(HOSTILE)
    page.keyboard.press("e")
    page.keyboard.press("End")
    page.keyboard.type(" <b>bold</b>")
    expect(page.locator("#diff ins")).to_have_text("<b>bold</b>")
    assert page.locator("#diff b, #review img, #review script, #review a[href^=javascript]").count() == 0
    assert page.evaluate("window.pwned") is None
    assert page.csp_violations == []


NATURAL_EDITS = [
    ("Hello, your parcel is on its way.", "Hello, your parcel left our depot today."),
    ("Draft 0.", "Draft 0. Sorry for the wait!"),
    ("Hi there,\nyour order ships Monday.", "Hi Dana,\nyour order BW-1 ships on Tuesday."),
    ("Kind regards, the team", "Kind regards,\nthe Brightwater team"),
    ("a  b", "a b"),
    ("", "A whole new reply."),
    ("Everything goes.", ""),
    ("odd\x85spaces\u00a0and\ufeffa BOM", "odd\x85spaces and\ufeffa BOM\u3000too"),
]


def test_the_pages_diff_shows_what_the_server_stores(live_server, browser_page):
    """The Changes view (static/js/worddiff.js) and the stored diff (annotations/diffing.py) agree."""
    import random

    from annotations.diffing import word_diff

    page = browser_page
    page.goto(f"{live_server.url}/accounts/login/")
    diff_in_page = "async ([a, b]) => (await import('/static/js/worddiff.js')).wordDiff(a, b)"
    for draft, final in NATURAL_EDITS:
        assert page.evaluate(diff_in_page, [draft, final]) == word_diff(draft, final), (draft, final)

    # Random edits: where two alignments are equally short the two may choose differently, but the
    # page's pieces always rebuild both texts.
    rng, same = random.Random(7), 0
    words = ["the", "order", "ships", "today", "sorry", "refund", "Dana", "BW-1", "\n", "  "]
    for _ in range(200):
        draft = " ".join(rng.choices(words, k=rng.randint(0, 30)))
        final_words = draft.split(" ")
        for _ in range(rng.randint(0, 5)):
            final_words.insert(rng.randint(0, len(final_words)), rng.choice(words))
            if len(final_words) > 1:
                final_words.pop(rng.randrange(len(final_words)))
        final = " ".join(final_words)
        ops = page.evaluate(diff_in_page, [draft, final])
        assert "".join(text for op, text in ops if op != "insert") == draft
        assert "".join(text for op, text in ops if op != "delete") == final
        same += ops == word_diff(draft, final)
    print(f"the page and the server chose the same alignment for {same} of 200 random edits")


def test_the_lease_is_kept_alive_by_heartbeat_while_the_reviewer_works(
    live_server, reviewer, domain, three_items, browser_page, settings
):
    settings.SORA_LEASE_SECONDS = 3  # heartbeats every second
    page = browser_page
    first = three_items[0]
    open_queue(page, live_server, reviewer, domain)
    shown = page.text_content("#lease")
    page.keyboard.press("e")
    for _ in range(5):  # five seconds of typing: longer than the lease
        page.keyboard.type(" More.")
        page.wait_for_timeout(1000)
    page.keyboard.press("Control+Enter")

    expect(page.locator("#notice")).to_have_text(f"Approved with your edits: item {first.pk}.")
    assert in_thread(lambda: Item.objects.get(pk=first.pk).status) == "approved"
    assert shown.startswith("Your lease runs until")


@pytest.fixture
def six_items(domain):
    return queue(domain, 6)


def test_pressing_next_in_a_hurry_never_leaves_a_claimed_item_behind(
    live_server, reviewer, domain, six_items, browser_page
):
    page = browser_page
    open_queue(page, live_server, reviewer, domain)
    for _ in range(4):
        page.keyboard.press("n")
    page.keyboard.down("n")  # a held key repeats: one skip, not a burst
    page.wait_for_timeout(300)
    page.keyboard.up("n")
    page.wait_for_timeout(500)

    shown = int(page.text_content("#item-id"))
    held = in_thread(lambda: set(Item.objects.filter(status="in_review").values_list("pk", flat=True)))
    assert shown in held and len(held) <= 2  # the item on screen and at most the prefetched one


@pytest.fixture
def windows_draft(domain):
    return ItemFactory(domain=domain, draft="Hello,\r\nyour parcel left today.\r\nKind regards")


def test_an_untouched_draft_with_windows_line_endings_is_approved_unedited(
    live_server, reviewer, domain, windows_draft, browser_page
):
    page = browser_page
    open_queue(page, live_server, reviewer, domain)
    expect(page.locator("#approve")).to_contain_text("Approve")
    expect(page.locator("#approve")).not_to_contain_text("with edits")
    page.keyboard.press("a")
    expect(page.locator("#notice")).to_have_text(f"Approved: item {windows_draft.pk}.")

    correction = in_thread(lambda: Correction.objects.get(item=windows_draft))
    assert (correction.edited, correction.final) == (False, windows_draft.draft)


def test_rubric_scores_chosen_on_the_page_are_saved_with_the_decision(
    live_server, reviewer, domain, three_items, browser_page
):
    page = browser_page
    open_queue(page, live_server, reviewer, domain)
    expect(page.locator("#scores")).to_contain_text("Kind.")  # the rubric's descriptions are on the page
    page.focus("select[name=tone]")
    page.keyboard.press("4")  # a select takes its value from the keyboard too
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    expect(page.locator("#notice")).to_have_text(f"Approved: item {three_items[0].pk}.")

    assert in_thread(lambda: Review.objects.get().scores) == {"tone": 4}
