#!/usr/bin/env python
"""Review-queue benchmark (PRODUCT.md §8, "review queue").

    .venv/bin/python bench/claims.py [--quick] [--json PATH] [--backends sqlite,postgres] [--scenarios A,B,C]

Each backend runs in its own child process against a FRESH database that this
script creates and drops itself:

* SQLite: a file in a new temporary directory, migrated, deleted at the end;
  the project's SQLite options (WAL, BEGIN IMMEDIATE) apply.
* PostgreSQL (only when DATABASE_URL points at one): a database named
  sora_bench_<pid> created on that server, migrated, dropped at the end. The
  database named in DATABASE_URL itself is never used; CREATE/DROP DATABASE
  run over a connection to the server's maintenance database ("postgres").

Scenarios, all through the real services (annotations.services), each thread a
reviewer user in the reviewer group and granted the domain(s):

A  claim throughput: N ready items in one domain, R reviewer threads looping
   item_claim_next until the queue is empty. Reports claims/s and double claims.
B  claim → approve: R reviewers looping claim → review_submit(approve, version)
   until empty. Reports items/s, double claims, approve→next latency
   (calling review_submit → the next claimed item is back).
C  approve→next with 100,000 ready items in the table (PostgreSQL): items over
   the 3 seeded domains plus approved ones, reviewers of all 3 domains; the
   loop runs for a fixed number of approvals or seconds.

Ratios are against the 1-reviewer claim rate measured in the same run and
backend. Label Studio figures are QUOTED from PRODUCT.md §8, not measured here.
Realtime events go to the in-process channel layer (REDIS_URL is unset in the
child) so the benchmark needs no Redis.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

from bench._machine import machine_info  # noqa: E402

# Quoted from PRODUCT.md §8 (Label Studio CE 1.23, claim → save loop). NOT measured by this script.
QUOTED_LABEL_STUDIO = {
    ("sqlite", 16): {"rate": 5.5, "p95_s": 7.1, "doubles": "about 10% of tasks"},
    ("sqlite", 32): {"rate": 3.1, "p95_s": None, "doubles": "about 20% of tasks"},
    ("postgres", 16): {"rate": 9.9, "p95_s": 2.2, "doubles": "none"},
    ("postgres", 32): {"rate": 8.9, "p95_s": 4.8, "doubles": "none"},
}
TARGET_PG_CLAIMS_PER_S = 500
TARGET_P95_MS = 100
TARGET_SQLITE_X_LABEL_STUDIO = 20

BENCH_DOMAIN = "bench_queue"
SEEDED_DOMAINS = ["customer_service", "medical_note", "news_draft"]
MAX_REVIEWERS = 32


# =============================================================================
# Parent: throwaway databases, one child process per backend, the report.
# =============================================================================


@contextmanager
def throwaway_sqlite():
    tmpdir = tempfile.mkdtemp(prefix="sora_bench_")
    try:
        yield f"sqlite:///{tmpdir}/bench.sqlite3", f"{tmpdir}/bench.sqlite3"
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@contextmanager
def throwaway_postgres(url: str):
    import environ
    import psycopg

    cfg = environ.Env.db_url_config(url)
    name = f"sora_bench_{os.getpid()}"
    conninfo = {
        "host": cfg.get("HOST") or None,
        "port": cfg.get("PORT") or None,
        "user": cfg.get("USER") or None,
        "password": cfg.get("PASSWORD") or None,
        "dbname": "postgres",
    }
    conninfo = {k: v for k, v in conninfo.items() if v is not None}
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}")), name
    finally:
        with psycopg.connect(**conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def parent_main(args: argparse.Namespace) -> int:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    db_url = os.environ.get("DATABASE_URL", "")
    if "postgres" in backends and not db_url.startswith(("postgres://", "postgresql://", "pgsql://")):
        print("DATABASE_URL is not a PostgreSQL URL: skipping the PostgreSQL runs.", file=sys.stderr)
        backends.remove("postgres")
    results = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "machine": machine_info(),
        "backends": {},
    }
    for backend in backends:
        with throwaway_sqlite() if backend == "sqlite" else throwaway_postgres(db_url) as (url, name):
            print(f"\n== {backend}: throwaway database {name}", file=sys.stderr)
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
                out = fh.name
            cmd = [sys.executable, __file__, "--child", backend, "--db-url", url, "--out", out]
            cmd += ["--scenarios", args.scenarios] + (["--quick"] if args.quick else [])
            env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "sora_web.settings.test"}
            env.pop("REDIS_URL", None)
            proc = subprocess.run(cmd, env=env, cwd=ROOT, check=False)
            try:
                results["backends"][backend] = json.loads(Path(out).read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                results["backends"][backend] = {}
            finally:
                Path(out).unlink(missing_ok=True)
            if proc.returncode != 0:
                print(f"{backend}: child exited with {proc.returncode}", file=sys.stderr)
                results["backends"][backend]["child_returncode"] = proc.returncode
    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["targets"] = evaluate_targets(results)
    print(render_report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nJSON written to {args.json}", file=sys.stderr)
    return 0


def _runs(results: dict, backend: str, scenario: str | None = None) -> list[dict]:
    runs = results["backends"].get(backend, {}).get("runs", [])
    return [r for r in runs if scenario is None or r["scenario"] == scenario]


def _baseline(results: dict, backend: str) -> float | None:
    for r in _runs(results, backend, "A"):
        if r["reviewers"] == 1 and r["procs"] == 1:
            return r["rate"]
    return None


def evaluate_targets(results: dict) -> list[dict]:
    out = []
    full = not results["quick"]
    size_note = "" if full else " (--quick: smaller than the target size)"
    pg_a32 = [r for r in _runs(results, "postgres", "A") if r["reviewers"] == 32]
    for r in pg_a32:
        out.append(
            {
                "target": f"PG, 32 reviewers ({r['mode']}): ≥ {TARGET_PG_CLAIMS_PER_S} claims/s over "
                f"{r['claims']:,} claims{size_note}",
                "measured": f"{r['rate']:.0f} claims/s",
                "met": r["rate"] >= TARGET_PG_CLAIMS_PER_S,
            }
        )
        out.append(
            {
                "target": f"PG, 32 reviewers ({r['mode']}): zero double claims",
                "measured": f"{r['doubles']} doubles, {r['db_bad_items']} items not claimed exactly once",
                "met": r["doubles"] == 0 and r["db_bad_items"] == 0,
            }
        )
    for r in _runs(results, "postgres", "C"):
        out.append(
            {
                "target": f"PG, {r['table_items']:,} items, {r['reviewers']} reviewer(s), {r['variant']}: "
                f"approve→next p95 ≤ {TARGET_P95_MS} ms{size_note}",
                "measured": f"p95 {r['lat_ms']['p95']:.1f} ms",
                "met": r["lat_ms"]["p95"] <= TARGET_P95_MS,
            }
        )
    for r in _runs(results, "sqlite", "B"):
        quoted = QUOTED_LABEL_STUDIO.get(("sqlite", r["reviewers"]))
        if not quoted:
            continue
        need = TARGET_SQLITE_X_LABEL_STUDIO * quoted["rate"]
        out.append(
            {
                "target": f"SQLite, {r['reviewers']} reviewers ({r['mode']}), claim→approve: "
                f"≥ {TARGET_SQLITE_X_LABEL_STUDIO}× Label Studio's quoted {quoted['rate']}/s = {need:.0f}/s, "
                "zero doubles",
                "measured": f"{r['rate']:.0f}/s ({r['rate'] / quoted['rate']:.0f}× quoted), {r['doubles']} doubles",
                "met": r["rate"] >= need and r["doubles"] == 0 and r["db_bad_items"] == 0,
            }
        )
    for backend in ("sqlite", "postgres"):
        for scenario in ("A", "B"):
            for r in _runs(results, backend, scenario):
                if r["reviewers"] > 1 and (r["doubles"] or r["db_bad_items"] or r["db_open_dupes"]):
                    out.append(
                        {
                            "target": f"{backend} {scenario} {r['reviewers']} ({r['mode']}): zero double claims",
                            "measured": f"{r['doubles']} doubles",
                            "met": False,
                        }
                    )
    return out


def _fmt_lat(lat: dict | None) -> str:
    if not lat:
        return "—"
    return f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f}"


def render_report(results: dict) -> str:
    lines = []
    m = results["machine"]
    lines.append(f"\nReview queue benchmark — {m['cores']} cores, {m['cpu']}, Python {m['python']}")
    lines.append(f"started {results['started']}, quick={results['quick']}")
    for backend, data in results["backends"].items():
        changed = data.get("code_changed_during_run")
        lines.append(
            f"{backend}: service code sha256 {data.get('code', '?')} ({', '.join(CODE_UNDER_TEST)})"
            + (f" — CHANGED DURING THE RUN to {changed}: numbers mix two versions" if changed else "")
        )
    header = (
        "| backend | scenario | reviewers | concurrency | items/claims | wall s | rate /s | × 1-reviewer claim rate "
        "| doubles (client / DB overlap / DB open dupes) | errors | latency ms p50 / p95 / p99 |"
    )
    lines += ["", header, "|" + " --- |" * 11]
    flagged = []
    for backend in ("postgres", "sqlite"):
        base = _baseline(results, backend)
        for r in _runs(results, backend):
            ratio = f"{r['rate'] / base:.2f}×" if base else "—"
            what = {"A": "A claim only", "B": "B claim→approve", "C": f"C approve→next, {r.get('variant', '')}"}
            lat = r.get("lat_ms") or r.get("claim_lat_ms")
            lat_label = "approve→next" if r.get("lat_ms") else "claim call"
            lines.append(
                f"| {backend} | {what[r['scenario']]} | {r['reviewers']} | {r['mode']} | {r['claims']:,} | "
                f"{r['wall_s']:.1f} | {r['rate']:.1f} | {ratio} | {r['doubles']} / {r['db_overlaps']} / "
                f"{r['db_open_dupes']} | {r['errors']} | {lat_label}: {_fmt_lat(lat)} |"
            )
            if r.get("fatal"):
                flagged.append(f"- {backend} {r['scenario']} R={r['reviewers']} ({r['mode']}): {r['fatal']}")
    if flagged:
        lines += ["", "Runs with problems:", *flagged]
    lines.append("")
    lines.append("Baseline: the 1-reviewer claim rate (scenario A, R=1) of the same backend, measured in this run.")
    lines.append("")
    lines.append("Label Studio CE 1.23 — QUOTED from PRODUCT.md §8, NOT measured here (claim → save loop):")
    lines.append("| backend | annotators | quoted claims/s | quoted save→next p95 | ours (B) items/s | ours / quoted |")
    lines.append("|" + " --- |" * 6)
    for (backend, n), q in QUOTED_LABEL_STUDIO.items():
        ours = [r for r in _runs(results, backend, "B") if r["reviewers"] == n]
        for r in ours or [None]:
            mine = f"{r['rate']:.1f} ({r['mode']})" if r else "not run"
            ratio = f"{r['rate'] / q['rate']:.0f}×" if r else "—"
            p95 = f"{q['p95_s']} s" if q["p95_s"] else "—"
            lines.append(f"| {backend} | {n} | {q['rate']} | {p95} | {mine} | {ratio} |")
    lines.append("")
    lines.append("Targets (PRODUCT.md §8):")
    for t in results["targets"]:
        lines.append(f"- [{'met' if t['met'] else 'NOT met'}] {t['target']} — measured {t['measured']}")
    for backend, data in results["backends"].items():
        for name, prof in (data.get("profile") or {}).items():
            loop = prof["single_reviewer_loop"]
            lines.append(f"\nProfile — {backend}, {name}:")
            lines.append(
                f"- queries: {prof['queries_per_claim']} per claim, {prof['queries_per_approve']} per approval "
                "(transaction BEGIN/COMMIT not counted)"
            )
            lines.append(
                f"- one reviewer, {loop['loops']} claim→approve loops under cProfile: "
                f"{loop['ms_per_loop']:.1f} ms/loop, "
                f"of which {loop['db_ms_per_loop']:.1f} ms waiting on the database ({loop['db_share']:.0%}), "
                f"{loop['queries_per_loop']:.1f} queries/loop"
            )
            lines.append(
                "- cumulative ms per loop: " + ", ".join(f"{f} {ms}" for f, ms in prof["cumulative_ms_per_loop"])
            )
            if prof.get("claim_plan"):
                lines.append("- plan of the claim query:")
                lines += [f"    {row}" for row in prof["claim_plan"]]
    return "\n".join(lines)


# =============================================================================
# Child: one backend, Django set up against the throwaway database.
# =============================================================================


CODE_UNDER_TEST = ["annotations/services", "annotations/selectors.py", "annotations/models.py", "collab/events.py"]


def code_fingerprint() -> str:
    """sha256 (12 hex) of the service code this process measures: the services may change between runs."""
    import hashlib

    digest = hashlib.sha256()
    for entry in CODE_UNDER_TEST:
        path = ROOT / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(ROOT)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def django_setup(expected_db: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sora_web.settings.test")
    import django

    django.setup()
    from django.conf import settings

    name = str(settings.DATABASES["default"]["NAME"])
    if name != expected_db:  # never run against anything but the database this script created
        raise SystemExit(f"refusing to run: settings point at {name!r}, not the throwaway {expected_db!r}")


def expected_db_name(url: str) -> str:
    import environ

    return str(environ.Env.db_url_config(url)["NAME"])


class _ThreadCounter:
    """Same interface as multiprocessing.Value for the progress counter."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def get_lock(self):
        return self._lock


def _bump(counter) -> None:
    with counter.get_lock():
        counter.value += 1


def _reviewer(user_id, mode, domain, max_loops, deadline, counter, ready, go, rec) -> None:
    """One reviewer: claims (mode "claim") or claims and approves (mode "loop"). Fills `rec`."""
    from django.contrib.auth import get_user_model
    from django.db import DatabaseError, connection, connections

    from annotations.exceptions import SoraError
    from annotations.services import item_claim_next, review_submit

    errors: Counter = rec["errors"]

    def claim():
        for _ in range(100):
            try:
                return item_claim_next(reviewer=user, domain=domain)
            except (DatabaseError, SoraError) as exc:
                errors[type(exc).__name__] += 1
                if len(rec["error_samples"]) < 3:
                    rec["error_samples"].append(repr(exc)[:300])
                time.sleep(0.005)
        raise RuntimeError("100 claim attempts in a row failed")

    try:
        user = get_user_model().objects.get(pk=user_id)
        connection.ensure_connection()
        ready.wait()
        go.wait()
        rec["t_start"] = time.monotonic()
        t_call = time.monotonic()
        item = claim()
        t_back = time.monotonic()
        if item is not None:
            rec["claims"].append((item.pk, t_call, t_back))
            rec["claim_lat"].append(t_back - t_call)
            if mode == "claim":
                _bump(counter)
        while item is not None:
            if time.monotonic() > deadline[0]:
                break
            if mode == "claim":
                if max_loops and len(rec["claims"]) >= max_loops:
                    break
                t_call = time.monotonic()
                item = claim()
                t_back = time.monotonic()
                if item is not None:
                    rec["claims"].append((item.pk, t_call, t_back))
                    rec["claim_lat"].append(t_back - t_call)
                    _bump(counter)
                continue
            # mode "loop": approve the held item, then claim the next one.
            t0 = time.monotonic()
            try:
                review_submit(item_id=item.pk, reviewer=user, decision="approve", version=item.version)
            except (DatabaseError, SoraError) as exc:
                errors[type(exc).__name__] += 1
                if len(rec["error_samples"]) < 3:
                    rec["error_samples"].append(repr(exc)[:300])
                rec["ends"].append((item.pk, time.monotonic(), False))
                item = claim()
                if item is not None:
                    rec["claims"].append((item.pk, time.monotonic(), time.monotonic()))
                continue
            t1 = time.monotonic()
            rec["ends"].append((item.pk, t1, True))
            _bump(counter)
            if max_loops and len(rec["ends"]) >= max_loops:
                break
            item = claim()
            t2 = time.monotonic()
            if item is not None:
                rec["claims"].append((item.pk, t1, t2))
                rec["lat"].append(t2 - t0)
                rec["submit_lat"].append(t1 - t0)
                rec["claim_lat"].append(t2 - t1)
        rec["t_end"] = time.monotonic()
    except Exception as exc:  # noqa: BLE001 — a dying reviewer must show up in the report, not vanish
        rec["fatal"] = repr(exc)[:500]
        rec["t_end"] = time.monotonic()
        if rec["t_start"] is None:  # died before the start: release the others
            ready.abort()
            go.abort()
    finally:
        connections.close_all()


def _new_rec(user_id: int) -> dict:
    return {
        "user": user_id,
        "claims": [],
        "ends": [],
        "lat": [],
        "submit_lat": [],
        "claim_lat": [],
        "errors": Counter(),
        "error_samples": [],
        "t_start": None,
        "t_end": None,
    }


def run_threads(user_ids, mode, domain, max_loops, seconds, counter, before_go=None, pbar=None) -> dict:
    """Run one reviewer thread per user id; all start together."""
    ready = threading.Barrier(len(user_ids) + 1)
    go = threading.Barrier(len(user_ids) + 1)
    recs = [_new_rec(uid) for uid in user_ids]
    deadline_holder = [math.inf]  # fixed when the threads are released
    threads = [
        threading.Thread(
            target=_reviewer,
            args=(uid, mode, domain, max_loops, deadline_holder, counter, ready, go, rec),
            daemon=True,
        )
        for uid, rec in zip(user_ids, recs, strict=True)
    ]
    ready_timeout = 300
    for t in threads:
        t.start()
    ready.wait(timeout=ready_timeout)
    if before_go is not None:
        before_go()
    start = time.monotonic()
    deadline_holder[0] = start + seconds if seconds else math.inf
    go.wait(timeout=ready_timeout)
    while any(t.is_alive() for t in threads):
        if pbar is not None:
            pbar.update(counter.value - pbar.n)
        time.sleep(0.25)
    end = time.monotonic()
    for t in threads:
        t.join()
    if pbar is not None:
        pbar.update(counter.value - pbar.n)
    for rec in recs:
        rec["errors"] = dict(rec["errors"])
    return {"t_start": start, "t_end": end, "recs": recs}


def _proc_entry(db_url, user_ids, mode, domain, max_loops, seconds, counter, mp_barrier, queue) -> None:
    """A worker process: its own Django, len(user_ids) reviewer threads."""
    os.environ["DATABASE_URL"] = db_url
    fingerprint = code_fingerprint()
    django_setup(expected_db_name(db_url))
    try:
        res = run_threads(user_ids, mode, domain, max_loops, seconds, counter, before_go=mp_barrier.wait)
    except Exception as exc:  # noqa: BLE001 — report it to the parent instead of hanging it
        res = {"t_start": None, "t_end": None, "recs": [], "fatal": repr(exc)}
    res["code"] = fingerprint
    queue.put(res)


def run_processes(db_url, user_ids, procs, mode, domain, max_loops, seconds, pbar) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    counter = ctx.Value("q", 0)
    barrier = ctx.Barrier(procs + 1)
    queue = ctx.Queue()
    chunks = [user_ids[i::procs] for i in range(procs)]
    workers = [
        ctx.Process(
            target=_proc_entry,
            args=(db_url, chunk, mode, domain, max_loops, seconds, counter, barrier, queue),
            daemon=True,
        )
        for chunk in chunks
    ]
    for w in workers:
        w.start()
    barrier.wait(timeout=300)
    results = []
    while len(results) < procs:
        try:
            results.append(queue.get(timeout=0.25))
        except Exception:  # noqa: BLE001 — queue.Empty: just refresh the progress bar
            if not any(w.is_alive() for w in workers) and queue.empty():
                break
        pbar.update(counter.value - pbar.n)
    for w in workers:
        w.join(timeout=60)
    pbar.update(counter.value - pbar.n)
    recs = [rec for res in results for rec in res["recs"]]
    starts = [res["t_start"] for res in results if res.get("t_start")]
    ends = [res["t_end"] for res in results if res.get("t_end")]
    fatal = [res["fatal"] for res in results if res.get("fatal")]
    out = {"t_start": min(starts), "t_end": max(ends), "recs": recs, "codes": sorted({r.get("code") for r in results})}
    if fatal or len(results) < procs:
        out["fatal"] = fatal or [f"only {len(results)} of {procs} processes reported"]
    return out


# --- data -------------------------------------------------------------------


def reset_queue_tables() -> None:
    """Empty the item/claim/review/audit tables of the throwaway database between runs."""
    from django.core.management.color import no_style
    from django.db import connection

    from annotations.models import AuditEvent, Claim, Correction, Generation, Item, Review

    tables = [m._meta.db_table for m in (Correction, Review, Claim, AuditEvent, Generation, Item)]
    sql = connection.ops.sql_flush(no_style(), tables, allow_cascade=True)
    connection.ops.execute_sql_flush(sql)


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("ANALYZE")


def make_reviewers(n: int) -> list[int]:
    from django.contrib.auth.models import Group, User

    from annotations import roles

    group, _ = Group.objects.get_or_create(name=roles.REVIEWER)
    ids = []
    for i in range(n):
        user, _ = User.objects.get_or_create(username=f"bench_reviewer_{i:02d}")
        user.set_unusable_password()
        user.save()
        user.groups.add(group)
        ids.append(user.pk)
    return ids


def bench_domain():
    from annotations.models import Domain

    domain, _ = Domain.objects.get_or_create(
        slug=BENCH_DOMAIN,
        defaults={"name": "Bench queue", "prompt_template": "Answer: {input}", "approvals_required": 1},
    )
    return domain


def insert_items(domain, n: int, *, status="ready", approvals=0, priorities=(0,), batch=5000) -> list[int]:
    from annotations.models import Generation, Item

    draft = "Hello, your parcel is on its way and should arrive within three working days."
    ids = []
    for start in range(0, n, batch):
        rows = [
            Item(
                domain=domain,
                status=status,
                input=f"Customer message {start + i}: where is my parcel?",
                draft=draft,
                final_text=draft if status == "approved" else "",
                approvals=approvals,
                priority=priorities[(start + i) % len(priorities)],
            )
            for i in range(min(batch, n - start))
        ]
        created = Item.objects.bulk_create(rows)
        Generation.objects.bulk_create(
            [Generation(item_id=it.pk, source=Generation.Source.SUBMITTED, text=draft) for it in created]
        )
        ids += [it.pk for it in created]
    return ids


# --- metrics ----------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def lat_summary(seconds: list[float]) -> dict | None:
    if not seconds:
        return None
    ms = [v * 1000 for v in seconds]
    return {"n": len(ms), "p50": pct(ms, 50), "p95": pct(ms, 95), "p99": pct(ms, 99), "max": max(ms)}


def client_doubles(recs: list[dict]) -> tuple[int, int]:
    """(items claimed more than once, items claimed again while an earlier claim of it was still open).

    A claim is open from the moment item_claim_next returned it until review_submit on it returned
    (for claim-only runs: forever)."""
    intervals = defaultdict(list)
    for rec in recs:
        ends = defaultdict(list)
        for item_id, t_end, _ok in rec["ends"]:
            ends[item_id].append(t_end)
        for item_id, _t_call, t_back in rec["claims"]:
            later = [t for t in ends[item_id] if t >= t_back]
            intervals[item_id].append((t_back, min(later) if later else math.inf))
    more_than_once = sum(1 for v in intervals.values() if len(v) > 1)
    overlapping = 0
    for v in intervals.values():
        v.sort()
        if any(v[i + 1][0] < v[i][1] for i in range(len(v) - 1)):
            overlapping += 1
    return more_than_once, overlapping


def db_checks(item_ids: set[int], scenario: str) -> dict:
    from annotations.models import Claim, Item, Review

    rows = list(Claim.objects.filter(item_id__in=item_ids).values_list("item_id", "claimed_at", "ended_at"))
    per_item = defaultdict(list)
    for item_id, claimed, ended in rows:
        per_item[item_id].append((claimed, ended))
    open_dupes = sum(1 for v in per_item.values() if sum(1 for _c, e in v if e is None) > 1)
    overlaps = 0
    for v in per_item.values():
        v.sort(key=lambda x: x[0])
        if any(v[i][1] is None or v[i + 1][0] < v[i][1] for i in range(len(v) - 1)):
            overlaps += 1
    not_once = sum(1 for i in item_ids if len(per_item.get(i, ())) != 1)
    out = {"db_claims": len(rows), "db_overlaps": overlaps, "db_open_dupes": open_dupes, "db_bad_items": not_once}
    if scenario == "B":
        statuses = Counter(Item.objects.filter(pk__in=item_ids).values_list("status", flat=True))
        reviews = Counter(Review.objects.filter(item_id__in=item_ids).values_list("item_id", flat=True))
        out["db_status"] = dict(statuses)
        out["db_items_not_reviewed_once"] = sum(1 for i in item_ids if reviews.get(i, 0) != 1)
        out["db_bad_items"] += out["db_items_not_reviewed_once"]
    return out


def summarise(scenario, backend, reviewers, procs, res, extra) -> dict:
    recs = res["recs"]
    wall = res["t_end"] - res["t_start"]
    claims = sum(len(r["claims"]) for r in recs)
    approvals = sum(1 for r in recs for _i, _t, ok in r["ends"] if ok)
    errors = Counter()
    for r in recs:
        errors.update(r["errors"])
    more_than_once, overlapping = client_doubles(recs)
    done = claims if scenario == "A" else approvals
    out = {
        "scenario": scenario,
        "backend": backend,
        "reviewers": reviewers,
        "procs": procs,
        "mode": (
            f"{reviewers} threads, 1 process" if procs == 1 else f"{procs} processes × {reviewers // procs} threads"
        ),
        "claims": claims,
        "approvals": approvals,
        "wall_s": wall,
        "rate": done / wall if wall > 0 else 0.0,
        "client_claimed_more_than_once": more_than_once,
        "client_double_claims": overlapping,
        "errors": sum(errors.values()),
        "error_types": dict(errors),
        "error_samples": [s for r in recs for s in r["error_samples"]][:5],
        "fatal": [r["fatal"] for r in recs if r.get("fatal")] + ([res["fatal"]] if res.get("fatal") else []),
        "claim_lat_ms": lat_summary([x for r in recs for x in r["claim_lat"]]),
        "lat_ms": lat_summary([x for r in recs for x in r["lat"]]),
        "submit_lat_ms": lat_summary([x for r in recs for x in r["submit_lat"]]),
        "next_claim_lat_ms": lat_summary([x for r in recs for x in r["claim_lat"]]) if scenario != "A" else None,
        **extra,
    }
    out["doubles"] = max(out["client_double_claims"], out.get("db_overlaps", 0), out.get("db_open_dupes", 0))
    out["code"] = ",".join(res.get("codes") or [CHILD_CODE[0]])
    if out["code"] != CHILD_CODE[0]:
        out["fatal"].append(f"worker processes ran other code ({out['code']}) than this process ({CHILD_CODE[0]})")
    return out


def drive(db_url, user_ids, procs, mode, domain, max_loops, seconds, desc, total) -> dict:
    pbar = tqdm(
        total=total, desc=desc, unit="it", file=sys.stderr, leave=True, mininterval=0.5 if sys.stderr.isatty() else 5.0
    )
    try:
        if procs == 1:
            return run_threads(user_ids, mode, domain, max_loops, seconds, _ThreadCounter(), pbar=pbar)
        return run_processes(db_url, user_ids, procs, mode, domain, max_loops, seconds, pbar)
    finally:
        pbar.close()


def scenario_queue(scenario, backend, db_url, users, reviewers, procs, n_items) -> dict:
    """A (claim until empty) or B (claim → approve until empty) on n_items ready items of one domain."""
    reset_queue_tables()
    domain = bench_domain()
    domain.reviewers.set(users[:reviewers])
    item_ids = set(insert_items(domain, n_items))
    analyze()
    mode = "claim" if scenario == "A" else "loop"
    label = f"{backend} {scenario} R={reviewers}" + (f" ({procs} procs)" if procs > 1 else "")
    res = drive(db_url, users[:reviewers], procs, mode, BENCH_DOMAIN, 0, 0, label, n_items)
    checks = db_checks(item_ids, scenario)
    return summarise(scenario, backend, reviewers, procs, res, {"items": n_items, **checks})


def build_big_table(users, n_ready, n_approved) -> dict:
    """The scenario C table: ready items over the 3 seeded domains, approved ones, and, in the
    two-approval domain, ready items that already carry one approval (some by the bench reviewers)."""
    import random

    from annotations.models import Domain, Item, Review

    reset_queue_tables()
    rng = random.Random(7)
    domains = list(Domain.objects.filter(slug__in=SEEDED_DOMAINS).order_by("slug"))
    bench_domain().reviewers.clear()  # the reviewers work the 3 seeded domains only
    for d in domains:
        d.reviewers.set(users)
    per = n_ready // len(domains)
    t0 = time.monotonic()
    for i, d in enumerate(domains):
        n = per if i < len(domains) - 1 else n_ready - per * (len(domains) - 1)
        insert_items(d, n, priorities=(0, 0, 0, 1, 2))
        insert_items(d, n_approved // len(domains), status="approved", approvals=d.approvals_required)
    two = [d for d in domains if d.approvals_required > 1]
    half_done = 0
    if two:
        ready_ids = list(Item.objects.filter(domain=two[0], status="ready").values_list("id", flat=True))
        picked = rng.sample(ready_ids, k=len(ready_ids) // 3)
        Item.objects.filter(pk__in=picked).update(approvals=1)
        Review.objects.bulk_create(
            [Review(item_id=pk, reviewer_id=rng.choice(users), decision="approve", item_version=1) for pk in picked],
            batch_size=5000,
        )
        half_done = len(picked)
    analyze()
    return {
        "table_items": Item.objects.count(),
        "ready_items": Item.objects.filter(status="ready").count(),
        "ready_with_one_approval": half_done,
        "domains": [d.slug for d in domains],
        "build_s": time.monotonic() - t0,
    }


def scenario_big(backend, db_url, users, reviewers, loops, seconds, table, variant, domain) -> dict:
    label = f"{backend} C R={reviewers} {variant}"
    per = max(1, loops // reviewers)
    res = drive(db_url, users[:reviewers], 1, "loop", domain, per, seconds, label, per * reviewers)
    return summarise(
        "C",
        backend,
        reviewers,
        1,
        res,
        {
            "variant": variant,
            **table,
            "db_overlaps": 0,
            "db_open_dupes": _open_dupes(),
            "db_bad_items": 0,
            "loops_per_reviewer_max": per,
            "seconds_max": seconds,
        },
    )


def _open_dupes() -> int:
    from django.db.models import Count

    from annotations.models import Claim

    return Claim.objects.filter(ended_at__isnull=True).values("item_id").annotate(n=Count("id")).filter(n__gt=1).count()


# --- profiling --------------------------------------------------------------


def profile_backend(backend: str, users: list[int], big_table: bool, loops: int = 200) -> dict:
    """Queries per claim / per approval, DB time share, and the claim query's plan."""
    import cProfile
    import pstats

    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from annotations.services import item_claim_next, review_submit

    user = get_user_model().objects.get(pk=users[0])
    out: dict = {}
    domain = None if big_table else BENCH_DOMAIN

    # 1. Queries of one claim and one approval, rolled back.
    with transaction.atomic():
        with CaptureQueriesContext(connection) as q_claim:
            item = item_claim_next(reviewer=user, domain=domain)
        with CaptureQueriesContext(connection) as q_review:
            review_submit(item_id=item.pk, reviewer=user, decision="approve", version=item.version)
        transaction.set_rollback(True)
    out["queries_per_claim"] = len(q_claim.captured_queries)
    out["queries_per_approve"] = len(q_review.captured_queries)
    out["claim_queries"] = [(q["sql"][:160], q["time"]) for q in q_claim.captured_queries]
    out["approve_queries"] = [(q["sql"][:160], q["time"]) for q in q_review.captured_queries]
    # The queue query (ORDER BY priority DESC …), not the expired-leases one that runs before it.
    #    (ORM: ORDER BY "annotations_item"."priority" DESC; one-statement CTE: ORDER BY candidate.priority DESC).
    claim_sql = next(
        (q["sql"] for q in q_claim.captured_queries if "priority desc" in q["sql"].replace('"', "").lower()), None
    )
    out["claim_sql"] = claim_sql

    # 2. The claim query's plan.
    if claim_sql:
        with transaction.atomic(), connection.cursor() as cur:
            if connection.vendor == "postgresql":
                cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + claim_sql)
            else:
                cur.execute("EXPLAIN QUERY PLAN " + claim_sql)
            out["claim_plan"] = [" ".join(str(c) for c in row) for row in cur.fetchall()]
            transaction.set_rollback(True)

    # 3. Where a single reviewer's time goes: DB round trips vs Python, over `loops` claim→approve loops
    #    (under cProfile, which slows the Python side down; compare shares, not absolute times).
    db_time = [0.0, 0]

    def timer(execute, sql, params, many, context):
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            db_time[0] += time.perf_counter() - t
            db_time[1] += 1

    n = loops
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    done = 0
    with connection.execute_wrapper(timer):
        prof.enable()
        item = item_claim_next(reviewer=user, domain=domain)
        while item is not None and done < n:
            review_submit(item_id=item.pk, reviewer=user, decision="approve", version=item.version)
            done += 1
            item = item_claim_next(reviewer=user, domain=domain)
        prof.disable()
    total = time.perf_counter() - t0
    out["single_reviewer_loop"] = {
        "loops": done,
        "ms_per_loop": 1000 * total / max(done, 1),
        "db_ms_per_loop": 1000 * db_time[0] / max(done, 1),
        "queries_per_loop": db_time[1] / max(done, 1),
        "db_share": db_time[0] / total if total else 0,
    }
    stats = pstats.Stats(prof)
    interesting = []
    for (filename, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        rel = filename.replace(str(ROOT) + "/", "")
        if rel.startswith(("annotations/", "collab/")) or func in ("async_to_sync", "__call__") and "asgiref" in rel:
            interesting.append((f"{rel}:{func}", round(1000 * ct / max(done, 1), 3)))
    interesting.sort(key=lambda x: -x[1])
    out["cumulative_ms_per_loop"] = interesting[:15]
    return out


# --- child main -------------------------------------------------------------


CHILD_CODE = [""]  # the fingerprint of the code this child imported


def child_main(args: argparse.Namespace) -> int:
    os.environ["DATABASE_URL"] = args.db_url
    CHILD_CODE[0] = code_fingerprint()
    django_setup(expected_db_name(args.db_url))
    from django.core.management import call_command
    from django.db import connection

    t0 = time.monotonic()
    call_command("migrate", verbosity=0, interactive=False)
    backend = args.child
    scenarios = {s.strip().upper() for s in args.scenarios.split(",")}
    n_items = 2_000 if args.quick else 10_000
    users = make_reviewers(MAX_REVIEWERS)
    result: dict = {"server": connection.vendor, "migrate_s": time.monotonic() - t0, "runs": [], "code": CHILD_CODE[0]}
    with connection.cursor() as cur:
        cur.execute("SELECT version()" if backend == "postgres" else "SELECT sqlite_version()")
        result["server_version"] = cur.fetchone()[0]
    connection.close()

    def save():
        Path(args.out).write_text(json.dumps(result, default=str))

    if backend == "postgres":
        plan_a = [(1, 1), (32, 1), (32, 4)]
        plan_b = [(16, 1), (32, 1), (32, 4)]
    else:
        plan_a = [(1, 1), (16, 1), (32, 1)]
        plan_b = [(16, 1), (32, 1)]
    if "A" in scenarios:
        for reviewers, procs in plan_a:
            result["runs"].append(scenario_queue("A", backend, args.db_url, users, reviewers, procs, n_items))
            save()
    if "B" in scenarios:
        for reviewers, procs in plan_b:
            result["runs"].append(scenario_queue("B", backend, args.db_url, users, reviewers, procs, n_items))
            save()
    profile: dict = {}
    if "P" in scenarios or "B" in scenarios:
        reset_queue_tables()
        domain = bench_domain()
        domain.reviewers.set(users)
        insert_items(domain, 1_000)
        analyze()
        profile["small_queue_1000_items"] = profile_backend(backend, users, big_table=False)
        save()
    if "C" in scenarios and backend == "postgres":
        n_ready = 20_000 if args.quick else 100_000
        print(f"building the scenario C table ({n_ready:,} ready items)…", file=sys.stderr)
        table = build_big_table(users, n_ready, n_ready // 5)
        loops, seconds = (400, 15) if args.quick else (1_500, 40)
        for reviewers in (1, 8):
            result["runs"].append(
                scenario_big(backend, args.db_url, users, reviewers, loops, seconds, table, "3 domains", None)
            )
            save()
        for reviewers in (1, 8):
            result["runs"].append(
                scenario_big(
                    backend, args.db_url, users, reviewers, loops, seconds, table, "1 domain", "customer_service"
                )
            )
            save()
        profile["big_table"] = {**table, **profile_backend(backend, users, big_table=True, loops=30)}
    result["profile"] = profile
    if code_fingerprint() != CHILD_CODE[0]:
        result["code_changed_during_run"] = code_fingerprint()
    save()
    from django.db import connections

    connections.close_all()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 items (20,000 for scenario C)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite,postgres")
    parser.add_argument("--scenarios", default="A,B,C", help="comma-separated: A,B,C (P: profile only)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--db-url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return child_main(args) if args.child else parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
