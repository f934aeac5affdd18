#!/usr/bin/env python
"""Review screen benchmark: approve → next item, in real Chromium against `sora_serve`.

    .venv/bin/python bench/review_screen.py [--decisions N] [--warmup W] [--pause-ms P] [--extra-items K]
                                            [--json PATH] [--keep]

Everything runs in a throwaway temporary folder, deleted at the end (--keep
keeps it, with the stack's log): a data directory used as SORA_DATA_DIR
(SQLite database, embedded Redis socket, collected static files) and a snapshot
of the working tree's source (git ls-files, tracked and untracked), from which
the stack is started, so edits to the checkout during a run cannot mix code
versions. DATABASE_URL and REDIS_URL are removed from the stack's environment:
embedded defaults only. `sora_serve` runs in its own process group, which is
killed at the end whatever happens.

Set-up: `manage.py migrate`, `collectstatic`, `seed_demo` (36 customer_service
items with drafts), a third reviewer `reviewer3` for the customer_service
domain, then K more customer_service items with drafts submitted through the
API as the demo `integration` user (copies of the demo cases; K is at least
enough that the queue never runs dry). No model is prepared or activated: every
item already has its draft and nothing is generated.

Three ways to get from a decision to the next item on screen, each in its own
browser context (one signed-in reviewer each, so one's leases never change
what another's page does), all on /review/customer_service/ in one Debian
Chromium (Playwright, the flags of tests/browser/conftest.py):

(a) product   `reviewer` presses `a` on the review screen. Timed inside the
              page with performance.now(): a capture keydown listener → the
              first change of #item-id (MutationObserver), as in
              tests/browser/test_review_stack.py. The screen has prefetched the
              next item; before each press the script waits until that claim is
              done (the reviewer holds two leases), as it is for a person who
              reads for more than a few milliseconds.
(b) no prefetch  `reviewer2`'s review page is used only as a host (same origin,
              its session cookie, the X-CSRFToken header from #csrf): `fetch`
              POST /api/v1/items/{id}/reviews/ then POST /api/v1/queue/claim/,
              one after the other, timed in the page; the claimed item is the
              one decided next time. This is the fewest round trips before a
              client that claims only after a decision could show the next
              item; nothing is rendered, which favours this baseline.
(c) page per item  `reviewer3`, the way form-style tools (Label Studio …)
              work: POST the review with `fetch`, then a full page load of
              /review/customer_service/, which claims the next item, until
              #item-id shows it. Clock: performance.timeOrigin + performance.now()
              before the POST in the old document → the same in the new
              document when #item-id gets its text (an init script installs the
              observer in every document); Date.now() on both sides is the
              cross-check. The navigation is started by the page itself the
              moment the POST has answered (no round trip to this script in
              between). Before each decision the item the new page prefetched
              is released (untimed), so the page load really claims.

Order: after W warm-up rounds (not counted), N rounds; each round runs (a),
(b), (c) once, in an order that cycles through all 6 permutations, so none is
always first or last after the pause. Before each timed decision all three
wait the same pause (P ms) with nothing of theirs in flight. Any decision not
answered 201 (or a next item not shown) stops the run: exit status 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

from bench._machine import git_state, loadavg, machine_info  # noqa: E402

DOMAIN = "customer_service"
VARIANTS = ["product", "no_prefetch", "page_per_item"]
USERS = {"product": "reviewer", "no_prefetch": "reviewer2", "page_per_item": "reviewer3"}
LABELS = {
    "product": "(a) product: prefetched next item",
    "no_prefetch": "(b) baseline 1: no prefetch",
    "page_per_item": "(c) baseline 2: page per item",
}
TIMED = {
    "product": "key `a` → next item id on the page",
    "no_prefetch": "POST review → POST claim answered (fetch, nothing rendered)",
    "page_per_item": "POST review → full page load that claims → item id on the page",
}
# Quoted from PRODUCT.md §8 for context only; this script runs SQLite with a few hundred items, not that size.
TARGET_NOTE = "PRODUCT.md §8: approve→next item p95 ≤ 100 ms with 100,000 items (PostgreSQL); not evaluated here"

# The page's script and API calls, as run inside the pages.
RECORD_SWITCH = """() => {
    window.__bench = {key: null, shown: null};
    document.addEventListener("keydown", (e) => {
        if (e.key === "a" && window.__bench.key === null) window.__bench.key = performance.now();
    }, {capture: true});
    new MutationObserver(() => {
        const b = window.__bench;
        if (b.key !== null && b.shown === null) b.shown = performance.now();
    }).observe(document.getElementById("item-id"), {childList: true, characterData: true, subtree: true});
}"""
# Resource Timing keeps 250 entries by default: start each decision with an empty buffer.
RESET_SWITCH = "() => { window.__bench = {key: null, shown: null}; performance.clearResourceTimings(); }"
# The review POST the screen sent, on the same clock as the key press.
REVIEW_REQUEST = """(id) => {
    const e = performance.getEntriesByType("resource")
        .filter((x) => x.name.endsWith(`/api/v1/items/${id}/reviews/`)).pop();
    return e ? {start: e.startTime, end: e.responseEnd} : null;
}"""
# Installed in every document of context (c): the first moment #item-id has text.
SHOWN_INIT_SCRIPT = """(() => {
    const attach = () => {
        const el = document.getElementById("item-id");
        if (!el) return;
        const record = () => {
            if (window.__shownAt === undefined && el.textContent) {
                window.__shownAt = performance.now();
                window.__shownDate = Date.now();
            }
        };
        new MutationObserver(record).observe(el, {childList: true, characterData: true, subtree: true});
        record();
    };
    // "interactive": the document is parsed and its deferred (module) scripts have not run yet.
    if (document.readyState === "loading") document.addEventListener("readystatechange", attach, {once: true});
    else attach();
})();"""
HEADERS_JS = """const headers = {Accept: "application/json", "Content-Type": "application/json",
                 "X-CSRFToken": document.getElementById("csrf").value};"""
HELD_BY_ME = """async (domain) => {
    const me = JSON.parse(document.getElementById("boot").textContent).user;
    const r = await fetch(`/api/v1/items/?domain=${domain}&status=in_review`,
                          {headers: {Accept: "application/json"}, credentials: "same-origin"});
    if (r.status !== 200) return {error: r.status};
    const data = await r.json();
    return data.results.filter((i) => i.lease_owner === me).map((i) => ({id: i.id, version: i.version}));
}"""
RELEASE = (
    """async (id) => {"""
    + HEADERS_JS
    + """
    const r = await fetch(`/api/v1/items/${id}/release/`,
                          {method: "POST", headers, credentials: "same-origin", body: "{}"});
    return r.status;
}"""
)
CLAIM = (
    """async (domain) => {"""
    + HEADERS_JS
    + """
    const r = await fetch("/api/v1/queue/claim/",
                          {method: "POST", headers, credentials: "same-origin", body: JSON.stringify({domain})});
    const data = r.status === 200 ? await r.json() : null;
    return {status: r.status, item: data && {id: data.id, version: data.version}};
}"""
)
# (b): decide, then claim; the fewest round trips before a non-prefetching client could show the next item.
NO_PREFETCH = (
    """async ({id, version, domain}) => {"""
    + HEADERS_JS
    + """
    const t0 = performance.now();
    const r1 = await fetch(`/api/v1/items/${id}/reviews/`, {method: "POST", headers, credentials: "same-origin",
                           body: JSON.stringify({decision: "approve", version, scores: {}})});
    const d1 = await r1.json();
    const t1 = performance.now();
    if (r1.status !== 201) return {review_status: r1.status, detail: d1};
    const r2 = await fetch("/api/v1/queue/claim/", {method: "POST", headers, credentials: "same-origin",
                           body: JSON.stringify({domain})});
    const d2 = r2.status === 200 ? await r2.json() : null;
    const t2 = performance.now();
    return {review_status: r1.status, claim_status: r2.status, next: d2 && {id: d2.id, version: d2.version},
            review_ms: t1 - t0, claim_ms: t2 - t1, total_ms: t2 - t0};
}"""
)
# (c): decide, and the moment the server has answered 201, load the queue page (which claims) in this tab.
PAGE_PER_ITEM_START = (
    """({id, version, url}) => {"""
    + HEADERS_JS
    + """
    sessionStorage.removeItem("benchC");
    delete window.__shownAt;
    const t0 = performance.now();
    const t0Epoch = performance.timeOrigin + t0;
    const t0Date = Date.now();
    fetch(`/api/v1/items/${id}/reviews/`, {method: "POST", headers, credentials: "same-origin",
                                           body: JSON.stringify({decision: "approve", version, scores: {}})})
        .then(async (r) => {
            await r.text();
            const t1 = performance.now();
            sessionStorage.setItem("benchC", JSON.stringify({
                status: r.status, t0Epoch, t0Date, postMs: t1 - t0, t1Epoch: performance.timeOrigin + t1}));
            if (r.status === 201) location.assign(url);
        })
        .catch((error) => sessionStorage.setItem("benchC", JSON.stringify({status: 0, error: String(error)})));
    return t0Epoch;
}"""
)
PAGE_PER_ITEM_DONE = """(oldOrigin) => {
    const s = JSON.parse(sessionStorage.getItem("benchC") || "null");
    if (s && s.status !== 201) return true;
    return performance.timeOrigin !== oldOrigin && window.__shownAt !== undefined;
}"""
PAGE_PER_ITEM_READ = """() => {
    const nav = performance.getEntriesByType("navigation")[0];
    const resources = performance.getEntriesByType("resource");
    const claims = resources.filter((e) => e.name.endsWith("/api/v1/queue/claim/"))
                            .sort((a, b) => a.startTime - b.startTime);
    const assets = resources.filter((e) => e.initiatorType !== "fetch" && e.initiatorType !== "xmlhttprequest");
    return {
        shownAt: window.__shownAt, shownDate: window.__shownDate, origin: performance.timeOrigin,
        bench: JSON.parse(sessionStorage.getItem("benchC") || "null"),
        itemId: document.getElementById("item-id").textContent,
        nav: nav && {type: nav.type, requestStart: nav.requestStart, responseStart: nav.responseStart,
                     responseEnd: nav.responseEnd, domInteractive: nav.domInteractive},
        claim: claims.length ? {startTime: claims[0].startTime, responseEnd: claims[0].responseEnd} : null,
        assets: assets.length, assetsFromNetwork: assets.filter((e) => e.transferSize > 0).length,
    };
}"""


class DecisionFailed(RuntimeError):
    """A decision was not answered 201, or the next item never appeared: the run stops, exit status 1."""


# =============================================================================
# Helpers
# =============================================================================


def browser_info() -> dict:
    chromium = shutil.which("chromium")
    chromium_version = ""
    if chromium:
        out = subprocess.run([chromium, "--version"], capture_output=True, text=True, check=False).stdout
        chromium_version = out.strip().splitlines()[-1] if out.strip() else ""
    try:
        from importlib.metadata import version

        playwright_version = version("playwright")
    except Exception:  # noqa: BLE001 — informational only
        playwright_version = "?"
    return {"chromium_binary": chromium, "chromium": chromium_version, "playwright": playwright_version}


def snapshot_tree(dest: Path) -> int | None:
    """Copy the working tree's source (tracked and untracked, not ignored) to `dest`; None without git."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    copied = 0
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file() and not src.is_symlink():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
            copied += 1
    return copied


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_json(
    url: str, body: dict | None = None, token: str | None = None, headers: dict | None = None
) -> tuple[int, dict]:
    sent = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Token {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=sent)
    try:
        with _NO_PROXY.open(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw or b"{}")
        except ValueError:
            return error.code, {"raw": raw[:300].decode(errors="replace")}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "mean": None, "min": None, "max": None}
    return {
        "n": len(values),
        "p50": pct(values, 0.50),
        "p95": pct(values, 0.95),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


def _python_name() -> str:
    return ".venv/bin/python" if ".venv" in sys.executable else Path(sys.executable).name


# =============================================================================
# The stack: sora_serve on a throwaway data directory
# =============================================================================


ADD_REVIEWER = """
from django.contrib.auth.models import Group, User
from annotations.models import Domain
user, _ = User.objects.get_or_create(username="{username}")
user.set_password("{username}-demo")
user.save()
user.groups.add(Group.objects.get(name="reviewer"))
Domain.objects.get(slug="{domain}").reviewers.add(user)
"""


class Stack:
    """sora_serve (Daphne, the Celery workers, embedded Redis, SQLite) in its own process group; stop() kills it."""

    def __init__(self, keep: bool) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sora_bench_review_"))
        self.keep = keep
        self.data = self.dir / "data"
        self.data.mkdir()
        self.code = self.dir / "code"
        self.files = snapshot_tree(self.code)
        if self.files is None:
            self.code = ROOT  # no git: run from the checkout itself
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        self.env.update(
            DJANGO_SETTINGS_MODULE="sora_web.settings.local",
            SORA_DATA_DIR=str(self.data),
            DJANGO_DEBUG="0",
            PYTHONUNBUFFERED="1",
        )
        self.env.setdefault("SORA_LOG_LEVEL", "WARNING")
        self.server: subprocess.Popen | None = None
        self.log = None
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def manage(self, *argv: str, timeout: float = 600) -> str:
        proc = subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=self.code,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def start(self, timeout: float = 180) -> dict:
        self.log = open(self.dir / "sora_serve.log", "wb")  # noqa: SIM115 — closed in stop()
        self.server = subprocess.Popen(
            [sys.executable, "manage.py", "sora_serve", "--port", str(self.port)],
            cwd=self.code,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Celery pool children and Redis die with it
        )
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"sora_serve exited ({self.server.returncode}):\n{self.log_tail()}")
            try:
                status, body = http_json(f"{self.base}/readyz")
                last = (status, body)
                if status == 200:
                    return body
            except OSError as exc:
                last = repr(exc)[:200]
            time.sleep(0.5)
        raise RuntimeError(f"the stack never became ready (last /readyz: {last}):\n{self.log_tail()}")

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return (self.dir / "sora_serve.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        server = self.server
        if server is not None:
            if server.poll() is None:
                try:
                    server.send_signal(signal.SIGTERM)  # sora_serve stops its own children on SIGTERM
                    server.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            try:
                os.killpg(server.pid, signal.SIGKILL)  # whatever is left of its group
            except (ProcessLookupError, PermissionError):
                pass
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.log is not None:
            self.log.close()
        if self.keep:
            print(f"kept {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def add_items(stack: Stack, count: int) -> dict:
    """`count` customer_service items with drafts, submitted through the API as the demo integration user."""
    from annotations.demo_data import demo_cases

    cases = demo_cases(DOMAIN)
    status, token = http_json(
        f"{stack.base}/api/v1/auth/token/", {"username": "integration", "password": "integration-demo"}
    )
    if status != 200:
        raise RuntimeError(f"no API token for the integration user: {status} {token}")
    t0 = time.perf_counter()
    for n in range(count):
        case = cases[n % len(cases)]
        external_id = f"bench-review-{n:05d}"
        status, body = http_json(
            f"{stack.base}/api/v1/items/",
            {
                "domain": DOMAIN,
                "input": case.input,
                "metadata": case.metadata,
                "draft": case.draft,
                "external_id": external_id,
            },
            token=token["token"],
            headers={"Idempotency-Key": external_id},
        )
        if status != 201 or body.get("status") != "ready":
            raise RuntimeError(f"item {external_id}: {status} {body}")
    return {"added": count, "seconds": time.perf_counter() - t0, "demo_cases": len(cases)}


def count_ready(stack: Stack) -> int:
    _, token = http_json(f"{stack.base}/api/v1/auth/token/", {"username": "reviewer", "password": "reviewer-demo"})
    status, body = http_json(f"{stack.base}/api/v1/items/?domain={DOMAIN}&status=ready", token=token["token"])
    if status != 200:
        raise RuntimeError(f"listing ready items: {status} {body}")
    return body["count"]


# =============================================================================
# The three measurements
# =============================================================================


def sign_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-demo")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def wait_for_item(page, timeout_ms: int = 30_000) -> str:
    page.wait_for_function(
        "() => document.getElementById('item-id').textContent && !document.getElementById('approve').disabled",
        timeout=timeout_ms,
    )
    return page.text_content("#item-id")


def wait_held(page, count: int, timeout_s: float = 30) -> list[dict]:
    """The items this page's user holds in the domain, once there are `count` (the prefetch has landed)."""
    deadline = time.monotonic() + timeout_s
    held: list[dict] | dict = []
    while time.monotonic() < deadline:
        held = page.evaluate(HELD_BY_ME, DOMAIN)
        if isinstance(held, list) and len(held) >= count:
            return held
        time.sleep(0.05)
    raise DecisionFailed(f"the page never held {count} items (it holds {held})")


class Product:
    """(a) the review screen itself: press `a`, time until the next item's id is on the page."""

    def __init__(self, page, base: str) -> None:
        self.page = page
        self.base = base
        page.goto(f"{base}/review/{DOMAIN}/")
        wait_for_item(page)
        page.evaluate(RECORD_SWITCH)

    def decide(self, pause_s: float) -> dict:
        page = self.page
        shown = wait_for_item(page)
        held = wait_held(page, 2)  # the one on screen and the prefetched one
        upcoming = [str(h["id"]) for h in held if str(h["id"]) != shown]
        page.evaluate(RESET_SWITCH)
        time.sleep(pause_s)
        with page.expect_response(
            lambda r: r.request.method == "POST" and r.url.endswith(f"/api/v1/items/{shown}/reviews/")
        ) as answer:
            page.keyboard.press("a")
        status = answer.value.status
        if status != 201:
            raise DecisionFailed(f"(a) approving item {shown} was answered {status}: {answer.value.text()[:300]}")
        page.wait_for_function("() => window.__bench.shown !== null", timeout=30_000)
        times = page.evaluate("() => window.__bench")
        now_shown = page.text_content("#item-id")
        if now_shown == shown:
            raise DecisionFailed(f"(a) item {shown} is still on screen after its approval")
        request = page.evaluate(REVIEW_REQUEST, shown)
        return {
            "ms": times["shown"] - times["key"],
            "key_to_request_ms": request["start"] - times["key"] if request else None,
            "review_ms": request["end"] - request["start"] if request else None,
            "response_to_shown_ms": times["shown"] - request["end"] if request else None,
            "showed_prefetched": now_shown in upcoming,
            "item": int(shown),
            "next": int(now_shown),
        }


class NoPrefetch:
    """(b) a client that claims only after a decision: POST review, then POST claim, from a signed-in page."""

    def __init__(self, page, base: str) -> None:
        self.page = page
        page.goto(f"{base}/review/{DOMAIN}/")  # the host page; its own two items are left alone
        wait_for_item(page)
        claimed = page.evaluate(CLAIM, DOMAIN)
        if claimed["status"] != 200:
            raise DecisionFailed(f"(b) the first claim was answered {claimed['status']}")
        self.item = claimed["item"]

    def decide(self, pause_s: float) -> dict:
        time.sleep(pause_s)
        result = self.page.evaluate(NO_PREFETCH, {**self.item, "domain": DOMAIN})
        if result["review_status"] != 201:
            raise DecisionFailed(
                f"(b) approving item {self.item['id']} was answered {result['review_status']}: {result.get('detail')}"
            )
        if result["claim_status"] != 200:
            raise DecisionFailed(f"(b) the claim after item {self.item['id']} was answered {result['claim_status']}")
        decided, self.item = self.item, result["next"]
        return {
            "ms": result["total_ms"],
            "review_ms": result["review_ms"],
            "claim_ms": result["claim_ms"],
            "item": decided["id"],
            "next": self.item["id"],
        }


class PagePerItem:
    """(c) POST the review, then a full page load of the queue page, which claims; until the item id shows."""

    def __init__(self, page, base: str) -> None:
        self.page = page
        self.url = f"{base}/review/{DOMAIN}/"
        page.goto(self.url)
        wait_for_item(page)

    def decide(self, pause_s: float) -> dict:
        page = self.page
        shown = wait_for_item(page)
        held = wait_held(page, 2)  # the page's own item and the one it prefetched
        mine = [h for h in held if str(h["id"]) == shown]
        if not mine:
            raise DecisionFailed(f"(c) item {shown} on screen is not held by {USERS['page_per_item']}: {held}")
        for other in held:
            if str(other["id"]) != shown:
                status = page.evaluate(RELEASE, other["id"])  # untimed: so that the next page load claims
                if status != 200:
                    raise DecisionFailed(f"(c) releasing the prefetched item {other['id']} was answered {status}")
        old_origin = page.evaluate("() => performance.timeOrigin")
        time.sleep(pause_s)
        page.evaluate(PAGE_PER_ITEM_START, {"id": mine[0]["id"], "version": mine[0]["version"], "url": self.url})
        page.wait_for_function(PAGE_PER_ITEM_DONE, arg=old_origin, timeout=30_000)
        got = page.evaluate(PAGE_PER_ITEM_READ)
        bench = got["bench"] or {}
        if bench.get("status") != 201:
            raise DecisionFailed(f"(c) approving item {shown} was answered {bench.get('status')}: {bench}")
        if got["itemId"] == shown:
            raise DecisionFailed(f"(c) item {shown} is still on screen after its approval")
        total = got["origin"] + got["shownAt"] - bench["t0Epoch"]
        claim = got["claim"]
        claimed_here = bool(claim) and claim["startTime"] < got["shownAt"]
        nav = got["nav"] or {}
        return {
            "ms": total,
            "wall_ms": got["shownDate"] - bench["t0Date"],  # Date.now() on both sides: the clock cross-check
            "post_ms": bench["postMs"],
            "post_to_navigation_ms": got["origin"] - bench["t1Epoch"],
            "html_ms": nav.get("responseEnd"),  # navigation start → the page's HTML received
            "claim_start_ms": claim["startTime"] if claim else None,
            "claim_ms": (claim["responseEnd"] - claim["startTime"]) if claim else None,
            "load_to_shown_ms": got["shownAt"],
            "nav_type": nav.get("type"),
            "assets": got["assets"],
            "assets_from_network": got["assetsFromNetwork"],
            "claimed_on_load": claimed_here,
            "item": int(shown),
            "next": int(got["itemId"]),
        }


def run_measurements(stack: Stack, args: argparse.Namespace, results: dict) -> None:
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM_FLAGS

    pause_s = args.pause_ms / 1000
    samples: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    results["samples"] = samples
    page_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        try:
            results["machine"]["chromium_reported"] = browser.version
            pages = {}
            for variant in VARIANTS:
                context = browser.new_context(viewport={"width": 1360, "height": 900})
                if variant == "page_per_item":
                    context.add_init_script(SHOWN_INIT_SCRIPT)
                page = context.new_page()
                page.on("pageerror", lambda exc, v=variant: page_errors.append(f"{v}: {exc}"))
                sign_in(page, stack.base, USERS[variant])
                pages[variant] = page
            runners = {
                "product": Product(pages["product"], stack.base),
                "no_prefetch": NoPrefetch(pages["no_prefetch"], stack.base),
                "page_per_item": PagePerItem(pages["page_per_item"], stack.base),
            }
            orders = list(itertools.permutations(VARIANTS))
            rounds = args.warmup + args.decisions
            results["rounds"] = []
            for n in tqdm(range(rounds), desc="rounds (a, b, c each)", unit="round", file=sys.stderr):
                order = orders[n % len(orders)]
                warm = n < args.warmup
                for position, variant in enumerate(order):
                    sample = runners[variant].decide(pause_s)
                    if not warm:
                        samples[variant].append({**sample, "round": n, "position": position + 1})
                results["rounds"].append(
                    {"round": n, "warmup": warm, "order": list(order), "loadavg": loadavg(), "t": time.time()}
                )
            a, c = samples["product"], samples["page_per_item"]
            results["checks"] = {
                "product_showed_the_prefetched_item": f"{sum(s['showed_prefetched'] for s in a)} of {len(a)}",
                "page_per_item_claimed_on_load": f"{sum(s['claimed_on_load'] for s in c)} of {len(c)}",
                "page_errors": page_errors,
            }
        finally:
            browser.close()


# =============================================================================
# Report
# =============================================================================


def summarise(results: dict) -> None:
    samples = results["samples"]
    stats = {v: summary([s["ms"] for s in samples[v]]) for v in VARIANTS}
    product = stats["product"]
    ratios = {}
    for variant in VARIANTS:
        ratios[variant] = {
            key: (stats[variant][key] / product[key]) if product[key] and stats[variant][key] is not None else None
            for key in ("p50", "p95", "mean")
        }
    results["stats_ms"] = stats
    results["ratios_vs_product"] = ratios
    breakdown = {}
    a = samples["product"]
    keys = ("key_to_request_ms", "review_ms", "response_to_shown_ms")
    breakdown["product"] = {k: summary([s[k] for s in a if s[k] is not None]) for k in keys}
    b = samples["no_prefetch"]
    breakdown["no_prefetch"] = {k: summary([s[k] for s in b]) for k in ("review_ms", "claim_ms")}
    c = samples["page_per_item"]
    keys = ("post_ms", "post_to_navigation_ms", "html_ms", "claim_start_ms", "claim_ms", "load_to_shown_ms")
    breakdown["page_per_item"] = {k: summary([s[k] for s in c if s[k] is not None]) for k in keys}
    breakdown["page_per_item"]["clock_check_max_abs_ms"] = max((abs(s["ms"] - s["wall_ms"]) for s in c), default=None)
    breakdown["page_per_item"]["nav_types"] = sorted({s["nav_type"] for s in c if s["nav_type"]})
    breakdown["page_per_item"]["assets_from_network_max"] = max((s["assets_from_network"] for s in c), default=None)
    breakdown["page_per_item"]["assets"] = max((s["assets"] for s in c), default=None)
    breakdown["by_position_p50"] = {
        v: [pct([s["ms"] for s in samples[v] if s["position"] == k], 0.5) for k in (1, 2, 3)] for v in VARIANTS
    }
    results["breakdown"] = breakdown
    loads = [r["loadavg"][0] for r in results.get("rounds", []) if r["loadavg"]]
    results["loadavg"]["during_1min_min_max"] = [min(loads), max(loads)] if loads else None


def _ms(value) -> str:
    return "—" if value is None else f"{value:.1f}"


def _x(value) -> str:
    return "—" if value is None else f"{value:.2f}×"


def render_report(results: dict) -> str:
    m = results["machine"]
    cfg = results["config"]
    lines = [
        f"\nReview screen benchmark: approve → next item — {m['cores']} cores, {m['cpu']}, {m['mem_gib']} GiB, "
        f"Python {m['python']}, {m['chromium']} (Playwright {m['playwright']}, headless)",
        f"date: started {results['started']}, finished {results.get('finished', '?')}",
        f"command: {results['command']}",
        f"commit: {results['git']['commit']}"
        + (f" + uncommitted: {', '.join(results['git']['uncommitted'])}" if results["git"]["uncommitted"] else ""),
        f"stack: sora_serve (Daphne, Celery default+beat, Celery inference, embedded Redis, SQLite) on a fresh "
        f"SORA_DATA_DIR, DJANGO_DEBUG=0; no model; {results['items']['ready_at_start']} ready {DOMAIN} items at "
        f"the start ({results['items']['seeded']} from seed_demo + {results['items']['added']} added via the API)",
        f"order: {cfg['order']}",
        f"pause before each timed decision: {cfg['pause_ms']} ms, nothing of that reviewer's in flight",
    ]
    la = results["loadavg"]
    lines.append(
        f"load average (1/5/15 min): before the stack {' / '.join(map(str, la['start']))}, stack ready "
        f"{' / '.join(map(str, la['stack_ready']))}, at the end {' / '.join(map(str, la.get('end', [])))}; "
        f"1-min during the rounds {la.get('during_1min_min_max')} (min, max)"
    )
    if "stats_ms" not in results:
        return "\n".join(lines)
    stats, ratios = results["stats_ms"], results["ratios_vs_product"]
    lines += [
        "",
        "| measurement | what is timed | n | p50 ms | p95 ms | mean ms | baseline / product p50 | p95 | mean |",
        "|" + " --- |" * 9,
    ]
    for variant in VARIANTS:
        s, r = stats[variant], ratios[variant]
        lines.append(
            f"| {LABELS[variant]} | {TIMED[variant]} | {s['n']} | {_ms(s['p50'])} | {_ms(s['p95'])} | "
            f"{_ms(s['mean'])} | {_x(r['p50'])} | {_x(r['p95'])} | {_x(r['mean'])} |"
        )
    bd = results["breakdown"]
    a, b, c = bd["product"], bd["no_prefetch"], bd["page_per_item"]
    lines += [
        "",
        "Ratios: baseline / product (higher = the product shows the next item sooner), same run, same server.",
        f"(a) parts, p50 / p95 ms: key → review POST sent {_ms(a['key_to_request_ms']['p50'])} / "
        f"{_ms(a['key_to_request_ms']['p95'])}, review POST {_ms(a['review_ms']['p50'])} / "
        f"{_ms(a['review_ms']['p95'])}, answer received → item id shown {_ms(a['response_to_shown_ms']['p50'])} / "
        f"{_ms(a['response_to_shown_ms']['p95'])} (Resource Timing)",
        f"(b) parts, p50 / p95 ms: review POST {_ms(b['review_ms']['p50'])} / {_ms(b['review_ms']['p95'])}, "
        f"claim POST {_ms(b['claim_ms']['p50'])} / {_ms(b['claim_ms']['p95'])}",
        f"(c) parts, p50 / p95 ms: review POST {_ms(c['post_ms']['p50'])} / {_ms(c['post_ms']['p95'])}; "
        f"POST answered → navigation start {_ms(c['post_to_navigation_ms']['p50'])} / "
        f"{_ms(c['post_to_navigation_ms']['p95'])}; from navigation start: HTML received "
        f"{_ms(c['html_ms']['p50'])} / {_ms(c['html_ms']['p95'])}, claim sent {_ms(c['claim_start_ms']['p50'])} / "
        f"{_ms(c['claim_start_ms']['p95'])}, claim took {_ms(c['claim_ms']['p50'])} / {_ms(c['claim_ms']['p95'])}, "
        f"item id shown {_ms(c['load_to_shown_ms']['p50'])} / {_ms(c['load_to_shown_ms']['p95'])}",
        f"(c) navigation type {c['nav_types']}; {c['assets']} static assets per page, at most "
        f"{c['assets_from_network_max']} from the network (the rest from Chromium's cache); clock cross-check "
        f"(timeOrigin + performance.now() against Date.now()): max |difference| {_ms(c['clock_check_max_abs_ms'])} ms",
    ]
    by_position = "; ".join(
        f"{LABELS[v].split(' ')[0]} " + " / ".join(_ms(x) for x in bd["by_position_p50"][v]) for v in VARIANTS
    )
    lines.append(f"p50 ms by position in the round (1st / 2nd / 3rd): {by_position}")
    checks = results.get("checks", {})
    lines.append(
        f"checks: (a) showed the item it had prefetched in {checks.get('product_showed_the_prefetched_item')}; "
        f"(c) page load claimed the shown item in {checks.get('page_per_item_claimed_on_load')}; "
        f"page errors: {len(checks.get('page_errors', []))}; every decision answered 201"
    )
    lines.append(f"for reference only — {TARGET_NOTE}: product p95 here {_ms(stats['product']['p95'])} ms")
    return "\n".join(lines)


# =============================================================================
# Main
# =============================================================================


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=60, help="timed decisions per measurement (default 60)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up rounds, not counted (default 5)")
    parser.add_argument("--pause-ms", type=int, default=300, help="pause before each timed decision (default 300)")
    parser.add_argument("--extra-items", type=int, default=200, help="items added through the API (at least)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (stack log) for inspection")
    args = parser.parse_args()
    if args.decisions < 1 or args.warmup < 0 or args.pause_ms < 0:
        parser.error("--decisions ≥ 1, --warmup ≥ 0, --pause-ms ≥ 0")

    # A supervisor's SIGTERM unwinds like Ctrl-C, so the stack is still killed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rounds = args.warmup + args.decisions
    results: dict = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([_python_name(), *sys.argv]),
        "machine": {**machine_info(), **browser_info()},
        "git": git_state(),
        "loadavg": {"start": loadavg()},
        "config": {
            "decisions": args.decisions,
            "warmup_rounds": args.warmup,
            "pause_ms": args.pause_ms,
            "order": f"interleaved: {args.warmup} warm-up round(s) (not counted), then {args.decisions} rounds of "
            "(a), (b), (c) once each, the order cycling through all 6 permutations",
            "users": USERS,
            "domain": DOMAIN,
        },
    }
    failed: str | None = None
    stack = Stack(keep=args.keep)
    try:
        print(f"== stack in {stack.dir} (port {stack.port})", file=sys.stderr)
        stack.manage("migrate", "--noinput")
        stack.manage("collectstatic", "--noinput")
        stack.manage("seed_demo")
        stack.manage("shell", "-c", ADD_REVIEWER.format(username=USERS["page_per_item"], domain=DOMAIN))
        results["stack"] = {"readyz": stack.start(), "code_files_snapshot": stack.files}
        seeded = count_ready(stack)
        # Each round decides 3 items (the released prefetch of (c) goes back to the queue); the pages hold ≤ 7.
        needed = 3 * rounds + 20 - seeded
        added = add_items(stack, max(args.extra_items, needed))
        results["items"] = {"seeded": seeded, "added": added["added"], "ready_at_start": count_ready(stack)}
        results["loadavg"]["stack_ready"] = loadavg()
        run_measurements(stack, args, results)
        results["items"]["ready_at_end"] = count_ready(stack)
    except DecisionFailed as exc:
        failed = str(exc)
    except KeyboardInterrupt:
        failed = "interrupted"
    except Exception as exc:  # noqa: BLE001 — reported, then exit status 1
        failed = f"{type(exc).__name__}: {exc}"
    finally:
        if failed:
            print(f"\nsora_serve log (tail):\n{stack.log_tail()}", file=sys.stderr)
        stack.stop()
    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["loadavg"]["end"] = loadavg()
    results.setdefault("items", {"seeded": "?", "added": "?", "ready_at_start": "?"})
    results["loadavg"].setdefault("stack_ready", [])
    if failed:
        results["failed"] = failed
    elif results.get("samples"):
        summarise(results)
    print(render_report(results))
    if failed:
        print(f"\nFAILED: {failed}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nJSON written to {args.json}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
