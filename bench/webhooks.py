#!/usr/bin/env python
"""Webhook delivery throughput benchmark (PRODUCT.md §8, "webhooks": ≥ 200 deliveries/s to a local receiver).

    .venv/bin/python bench/webhooks.py [--deliveries N] [--endpoints E] [--concurrency C] [--repeats R]
                                       [--json PATH]

Needs a Redis server (REDIS_URL, or --redis-url). Everything else is made here and removed at the end:

* Database: a throwaway one, migrated: on the PostgreSQL server of DATABASE_URL when it names one (a
  database sora_bench_<pid>, created and dropped as bench/claims.py does; the database named in
  DATABASE_URL is never used), else a SQLite file in a temporary directory.
* Broker: REDIS_URL with the database number --redis-db (default 13), so the `webhooks` queue of a test
  run or a dev worker on the same server is not shared; the queue is emptied before and after.
* Receiver: its own process (so it never competes for the bench's GIL), an asyncio HTTP/1.1 server on
  127.0.0.1 with keep-alive that answers every POST `200 ok` at once and counts the requests, their
  distinct webhook-ids, and the monotonic time of the first and last one. A sample of the requests is
  checked afterwards with the `standardwebhooks` library (the signatures a receiver would verify).
* Worker: a real `celery -A sora_web worker -Q webhooks --concurrency C` process (prefork, C = the number
  of cores unless told), settings `sora_web.settings.local` (not `.test`, which makes Celery eager) with
  DJANGO_DEBUG=0 and SORA_WEBHOOK_ALLOW_PRIVATE=1, log level INFO as docker-compose runs it (to a file).

Product, per repeat: E endpoints (made with `webhooks.services.endpoint_create`, each a different path on the
receiver) subscribe to item.approved; N / E events are written with `webhooks.services.event_emit` (the
outbox rows exactly as an approval writes them, a realistic item.approved `data` of about 600 bytes) in one
transaction, so that at its commit the product's on_commit callbacks queue all N tasks. The clock starts at
that commit (the first task queued) and stops at the receiver's last arrival of the N; deliveries/s is N
over that. The per-attempt latency is the product's own log (DeliveryAttempt.latency_ms: address check +
POST + reading the answer). Errors: attempts that did not get a 2xx, deliveries not succeeded once every
row is final, requests missing or repeated at the receiver.

Baseline, in the same run, after each product run: the same N bodies, message ids and secrets (read from the
database before its clock), signed with `webhooks.signing.signed_headers` and POSTed by C threads sharing one
`httpx.Client` to the same receiver: no database, no Celery, no address check. The clock starts when the
threads are released and stops at the receiver's last arrival. This is the ceiling of this machine for
"sign and POST"; the report gives product / baseline.

A warm-up of a few deliveries through the worker precedes the runs (not counted). Afterwards, unless
--no-profile, K deliveries are sent one at a time in this process by `webhooks.services.delivery_send` (no
Celery) with every SQL query and COMMIT timed, to show where a delivery's time goes: the database, the
address check, the HTTP exchange, the rest (ORM, Python). From /proc, for each product run: the CPU time per
delivery of every process a delivery passes through (the worker and its pool, the PostgreSQL server processes
with the backends that exited meanwhile, the Redis server, the receiver, this process), which bounds the
rate the machine's cores allow, and the machine's busy share.

Diagnosis options (not used by the measured runs): --worker-args (e.g. '--prefetch-multiplier 8',
'--pool threads'), --worker-loglevel, --worker-settings (a settings module on PYTHONPATH that changes one
setting, to measure a proposed change without editing the product) and --worker-cprofile PATH (with
--concurrency 1 --worker-args '--pool solo', the tasks run in the profiled process).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import json
import multiprocessing
import os
import queue
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

from bench._machine import git_state, loadavg, machine_info  # noqa: E402
from bench.claims import throwaway_postgres, throwaway_sqlite  # noqa: E402

TARGET_PER_S = 200
QUEUE = "webhooks"
SAMPLE = 50  # requests kept by the receiver for the signature check
WARMUP = 40


# =============================================================================
# The receiver (its own process)
# =============================================================================

_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


def receiver_main(conn, count, last) -> None:
    """Serve until told to stop. `count` (requests since the last reset) and `last` (time.monotonic of the
    latest one) are shared values; `conn` answers "reset", "stats" and "stop"."""

    state = {"ids": set(), "repeats": 0, "first": None, "samples": []}

    def record(head: bytes, body: bytes) -> None:
        now = time.monotonic()
        webhook_id = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"webhook-id":
                webhook_id = value.strip().decode()
        if webhook_id in state["ids"]:
            state["repeats"] += 1
        state["ids"].add(webhook_id)
        if state["first"] is None:
            state["first"] = now
        if len(state["samples"]) < SAMPLE:
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().decode().lower()] = value.strip().decode()
            state["samples"].append({"path": head.split(b" ", 2)[1].decode(), "headers": headers, "body": body})
        last.value = now
        count.value += 1

    class Http(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport, self.buffer = transport, bytearray()

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head = bytes(self.buffer[:end])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(self.buffer) < end + 4 + length:
                    return
                body = bytes(self.buffer[end + 4 : end + 4 + length])
                del self.buffer[: end + 4 + length]
                record(head, body)
                self.transport.write(_RESPONSE)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Http, "127.0.0.1", 0, backlog=1024)
        conn.send(server.sockets[0].getsockname()[1])
        stopped = loop.create_future()

        def command() -> None:
            what = conn.recv()
            if what == "reset":
                state.update(ids=set(), repeats=0, first=None, samples=[])
                count.value, last.value = 0, 0.0
                conn.send("ok")
            elif what == "stats":
                conn.send(
                    {
                        "count": count.value,
                        "distinct": len(state["ids"]),
                        "repeats": state["repeats"],
                        "first": state["first"],
                        "last": last.value,
                        "samples": state["samples"],
                    }
                )
            elif not stopped.done():
                stopped.set_result(None)

        loop.add_reader(conn.fileno(), command)
        await stopped
        server.close()

    asyncio.run(serve())


class Receiver:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.count = context.Value("q", 0, lock=False)
        self.last = context.Value("d", 0.0, lock=False)
        self._conn, child = context.Pipe()
        self.process = context.Process(target=receiver_main, args=(child, self.count, self.last), daemon=True)
        self.process.start()
        if not self._conn.poll(30):
            raise SystemExit("the receiver did not start")
        self.port = self._conn.recv()

    def url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{n}"

    def reset(self) -> None:
        self._conn.send("reset")
        self._conn.recv()

    def stats(self) -> dict:
        self._conn.send("stats")
        return self._conn.recv()

    def stop(self) -> None:
        if self.process.is_alive():
            self._conn.send("stop")
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


# =============================================================================
# CPU accounting (Linux /proc; empty elsewhere)
# =============================================================================


def process_tree_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process and its live children (the worker and its pool)."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total = 0.0
        for p in [pid, *map(int, children)]:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        return total
    except (OSError, ValueError, IndexError):
        return None


def _proc_cpu_s(pid: int | str, reaped: bool = False) -> float:
    """User + system CPU seconds of a process; with `reaped`, plus those of its children that exited (the
    PostgreSQL server's backends: a connection opened per task lives and dies between two samples)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if reaped else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_by_service(worker_pid: int, receiver_pid: int) -> dict[str, float] | None:
    """CPU seconds so far of everything a delivery passes through: the worker (and its pool), the PostgreSQL
    server processes, the Redis server, the receiver, and this process (which queues the tasks)."""
    try:
        out = {"worker": process_tree_cpu_s(worker_pid) or 0.0, "postgres": 0.0, "redis": 0.0}
        out["receiver"] = _proc_cpu_s(receiver_pid)
        out["bench process"] = time.process_time()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                name = (entry / "comm").read_text().strip()
                if name in ("postgres", "redis-server"):
                    out["postgres" if name == "postgres" else "redis"] += _proc_cpu_s(entry.name, reaped=True)
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
        return out
    except (OSError, ValueError, IndexError):
        return None


def system_cpu() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine since boot."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def busy_share(before, after) -> float | None:
    if not before or not after or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


# =============================================================================
# The worker (a real Celery process)
# =============================================================================


class Worker:
    def __init__(
        self, env: dict, concurrency: int, loglevel: str, extra: list[str], log: Path, cprofile: str = ""
    ) -> None:
        command = [sys.executable, *(["-m", "cProfile", "-o", cprofile] if cprofile else []), "-m", "celery"]
        command += ["-A", "sora_web", "worker", "-Q", QUEUE]
        command += ["--concurrency", str(concurrency), "--loglevel", loglevel, *extra]
        command += ["--hostname", f"webhooks-bench-{os.getpid()}@%h"]
        self.log = log
        with log.open("a") as output:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def wait_ready(self, timeout: float) -> None:
        """Until the worker answers a ping over the broker (whatever its log level)."""
        from sora_web.celery import app

        name = f"webhooks-bench-{os.getpid()}@"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if any(name in host for reply in app.control.ping(timeout=0.5) for host in reply):
                return
        raise SystemExit(f"the worker did not start:\n{self.log_tail()}")

    def cpu_s(self) -> float | None:
        return process_tree_cpu_s(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


# =============================================================================
# Phases
# =============================================================================


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def event_data(n: int) -> dict:
    """An item.approved `data` as services.item_event_data builds it, of a typical size."""
    return {
        "item_id": 100_000 + n,
        "external_id": f"ticket-{n:06d}",
        "domain": "customer_service",
        "input": f"Customer {n}: my parcel was due on Monday and the tracking page still says 'label created'. "
        "Can you tell me where it is and when it will arrive? Order SO-2231-{n}.",
        "draft": "Hello, thank you for your message. Your parcel left our warehouse today and should arrive "
        "within two working days. You can follow it with the tracking link in your e-mail.",
        "final_text": "Hello, thank you for writing. Your parcel left our warehouse this morning and should "
        "arrive within two working days; the tracking link in your e-mail shows where it is. "
        "Best regards, The Brightwater Support Team.",
        "edited": True,
        "model_version": "smollm2-135m-instruct",
        "reviewers": ["rita"],
        "redacted": False,
        "approved_at": dt.datetime.now(dt.UTC).isoformat(),
    }


def wait_for_count(receiver: Receiver, n: int, timeout: float, desc: str) -> bool:
    deadline = time.monotonic() + timeout
    with tqdm(total=n, desc=desc, unit="delivery", file=sys.stderr, leave=False) as bar:
        while time.monotonic() < deadline:
            got = receiver.count.value
            bar.update(min(got, n) - bar.n)
            if got >= n:
                return True
            time.sleep(0.01)
    return False


def wait_final(ids: list[int], timeout: float) -> int:
    """Wait until none of the deliveries is pending (their log is written after the POST); returns how many
    still are at the deadline."""
    from webhooks.models import Delivery

    deadline = time.monotonic() + timeout
    while True:
        pending = Delivery.objects.filter(pk__in=ids, status=Delivery.Status.PENDING).count()
        if not pending or time.monotonic() > deadline:
            return pending
        time.sleep(0.1)


def emit(events: int, start: int, at_commit=None) -> tuple[list[int], dict]:
    """Write `events` item.approved events with event_emit in one transaction; at its commit the product's
    own on_commit callbacks queue every delivery. Returns the delivery ids and the clock marks (and what
    `at_commit()` returned, called at the commit just before the clock starts)."""
    from django.db import transaction

    from webhooks.services import event_emit

    marks: dict = {}
    ids: list[int] = []
    started = time.perf_counter()
    with transaction.atomic():
        # Runs first at the commit, before the callbacks event_emit registers: the first task is queued next.
        def first() -> None:
            marks["at_commit"] = at_commit() if at_commit else None
            marks.update(t0=time.monotonic(), t0_wall=time.time())

        transaction.on_commit(first)
        for n in range(events):
            built = functools.partial(event_data, start + n)
            ids += [d.pk for d in event_emit(event_type="item.approved", data=built, domain=None)]
        marks["write_s"] = time.perf_counter() - started
        transaction.on_commit(lambda: marks.update(queued=time.monotonic()))  # after the last task is queued
    return ids, marks


def product_phase(receiver: Receiver, worker: Worker, n: int, endpoints: int, start: int, timeout: float) -> dict:
    from webhooks.models import Delivery, DeliveryAttempt

    receiver.reset()

    def snapshot():
        return worker.cpu_s(), system_cpu(), cpu_by_service(worker.process.pid, receiver.process.pid)

    ids, marks = emit(n // endpoints, start, snapshot)
    cpu_before, sys_before, services_before = marks["at_commit"]
    complete = wait_for_count(receiver, len(ids), timeout, "product: received")
    sys_after = system_cpu()
    services_after = cpu_by_service(worker.process.pid, receiver.process.pid)
    stats = receiver.stats()
    end = stats["last"] if complete else time.monotonic()
    still_pending = wait_final(ids, 60)
    cpu_after = worker.cpu_s()
    wall = end - marks["t0"]
    attempts = list(DeliveryAttempt.objects.filter(delivery_id__in=ids).values_list("status_code", "latency_ms"))
    latencies = [ms for _, ms in attempts if ms is not None]
    bad_attempts = sum(1 for code, _ in attempts if code is None or not 200 <= code < 300)
    not_succeeded = Delivery.objects.filter(pk__in=ids).exclude(status=Delivery.Status.SUCCEEDED).count()
    missing = len(ids) - stats["distinct"]
    return {
        "loop": "product",
        "deliveries": len(ids),
        "complete": complete,
        "received": stats["count"],
        "write_s": marks["write_s"],
        "queue_s": marks["queued"] - marks["t0"],
        "wall_s": wall,
        "per_s": stats["distinct"] / wall if wall > 0 else 0.0,
        "attempts": len(attempts),
        "latency_ms": {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)},
        "errors": {
            "attempts_not_2xx": bad_attempts,
            "deliveries_not_succeeded": not_succeeded,
            "missing_at_receiver": max(missing, 0),
            "repeated_at_receiver": stats["repeats"],
            "still_pending": still_pending,
        },
        "worker_cpu_ms_per_delivery": (
            (cpu_after - cpu_before) * 1000 / len(ids) if cpu_before is not None and cpu_after is not None else None
        ),
        "machine_busy": busy_share(sys_before, sys_after),
        # From the commit to the last arrival, so this process's share includes writing nothing, queueing all.
        "cpu_ms_per_delivery_by_process": (
            {k: (services_after[k] - services_before[k]) * 1000 / len(ids) for k in services_after}
            if services_before and services_after
            else None
        ),
        "loadavg_after": loadavg(),
        "samples": stats["samples"],
        "ids": ids,
    }


def baseline_phase(receiver: Receiver, ids: list[int], concurrency: int, timeout: float) -> dict:
    """Sign and POST the same deliveries with C threads and one httpx.Client: no database, no Celery."""
    import httpx

    from webhooks import signing
    from webhooks.models import Delivery

    work: queue.SimpleQueue = queue.SimpleQueue()
    rows = Delivery.objects.filter(pk__in=ids).values_list("message_id", "body", "endpoint__secret", "endpoint__url")
    for row in rows:
        work.put(row)
    total = len(ids)
    receiver.reset()
    latencies: list[float] = []
    failures: list[str] = []
    release = threading.Barrier(concurrency + 1)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = httpx.Client(follow_redirects=False, trust_env=False, limits=limits)

    def sender() -> None:
        release.wait()
        while True:
            try:
                message_id, body, secret, url = work.get_nowait()
            except queue.Empty:
                return
            headers = signing.signed_headers([secret], message_id, int(time.time()), body)
            headers.update({"content-type": "application/json", "user-agent": "Sora-Webhooks/1"})
            started = time.perf_counter()
            try:
                response = client.post(url, content=body.encode(), headers=headers, timeout=10)
                if not 200 <= response.status_code < 300:
                    failures.append(str(response.status_code))
            except httpx.HTTPError as exc:
                failures.append(type(exc).__name__)
            latencies.append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    sys_before = system_cpu()
    release.wait()
    t0 = time.monotonic()
    complete = wait_for_count(receiver, total, timeout, "baseline: received")
    sys_after = system_cpu()
    for thread in threads:
        thread.join(30)
    client.close()
    stats = receiver.stats()
    wall = (stats["last"] if complete else time.monotonic()) - t0
    return {
        "loop": "baseline",
        "deliveries": total,
        "complete": complete,
        "received": stats["count"],
        "wall_s": wall,
        "per_s": stats["distinct"] / wall if wall > 0 else 0.0,
        "attempts": len(latencies),
        "latency_ms": {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)},
        "errors": {
            "attempts_not_2xx": len(failures),
            "missing_at_receiver": max(total - stats["distinct"], 0),
            "repeated_at_receiver": stats["repeats"],
        },
        "machine_busy": busy_share(sys_before, sys_after),
        "loadavg_after": loadavg(),
    }


def verify_samples(samples: list[dict], secrets: dict[str, str]) -> dict:
    """Check the kept requests as a receiver would, with the standardwebhooks library."""
    from standardwebhooks import Webhook

    ok = failed = 0
    for sample in samples:
        try:
            Webhook(secrets[sample["path"]]).verify(sample["body"], sample["headers"])
            ok += 1
        except Exception:  # noqa: BLE001 — any failure to verify counts as one
            failed += 1
    return {"verified": ok, "failed": failed}


def profile_phase(receiver: Receiver, k: int) -> dict:
    """K deliveries sent one after another in this process by services.delivery_send, every query timed."""
    from django.db import connection

    from webhooks import addresses, services
    from webhooks.models import Delivery, Endpoint

    endpoint = Endpoint.objects.order_by("id").first()
    ids = [
        services._delivery_create(endpoint=endpoint, event_type="item.approved", data=event_data(n)).pk
        for n in range(k)
    ]
    db = {"s": 0.0, "queries": 0}
    commit = {"s": 0.0, "n": 0}
    post = {"s": 0.0}
    resolve = {"s": 0.0}

    def timed_query(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            db["s"] += time.perf_counter() - started
            db["queries"] += 1

    real_post, real_resolve, real_commit = services._post, services.resolve_allowed, connection._commit

    def timed_commit(*args, **kwargs):  # COMMIT of an atomic block: not seen by execute_wrapper
        started = time.perf_counter()
        try:
            return real_commit(*args, **kwargs)
        finally:
            commit["s"] += time.perf_counter() - started
            commit["n"] += 1

    def timed_post(*args, **kwargs):
        started = time.perf_counter()
        try:
            return real_post(*args, **kwargs)
        finally:
            post["s"] += time.perf_counter() - started

    def timed_resolve(*args, **kwargs):
        started = time.perf_counter()
        try:
            return real_resolve(*args, **kwargs)
        finally:
            resolve["s"] += time.perf_counter() - started

    receiver.reset()
    services.delivery_send(delivery_id=services._delivery_create(endpoint=endpoint, event_type="ping", data={}).pk)
    services._post, services.resolve_allowed, connection._commit = timed_post, timed_resolve, timed_commit
    try:
        with connection.execute_wrapper(timed_query):
            started, cpu_started = time.perf_counter(), time.process_time()
            for delivery_id in tqdm(ids, desc="profile: delivery_send in-process", file=sys.stderr, leave=False):
                services.delivery_send(delivery_id=delivery_id)
            total = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
    finally:
        services._post, services.resolve_allowed = real_post, real_resolve
        del connection._commit
    succeeded = Delivery.objects.filter(pk__in=ids, status=Delivery.Status.SUCCEEDED).count()
    # The address check alone, as every attempt makes it (getaddrinfo of 127.0.0.1 and the rules).
    started = time.perf_counter()
    for _ in range(k):
        addresses.resolve_allowed(endpoint.url)
    resolve_alone = (time.perf_counter() - started) / k
    # Signing alone.
    from webhooks import signing

    body = json.dumps({"type": "item.approved", "timestamp": "x", "data": event_data(0)})
    started = time.perf_counter()
    for _ in range(k):
        signing.signed_headers([endpoint.secret], "msg_x", 1, body)
    sign_alone = (time.perf_counter() - started) / k
    per = 1000 / k
    return {
        "deliveries": k,
        "succeeded": succeeded,
        "ms_per_delivery": total * per,
        "cpu_ms_per_delivery": cpu * per,
        "serial_per_s": k / total,
        "db_ms_per_delivery": db["s"] * per,
        "queries_per_delivery": db["queries"] / k,
        "commit_ms_per_delivery": commit["s"] * per,
        "commits_per_delivery": commit["n"] / k,
        "post_ms_per_delivery": post["s"] * per,
        "resolve_ms_per_delivery": resolve["s"] * per,
        "resolve_alone_ms": resolve_alone * 1000,
        "sign_alone_ms": sign_alone * 1000,
        "other_ms_per_delivery": (total - db["s"] - commit["s"] - post["s"]) * per,
    }


# =============================================================================
# Main
# =============================================================================


def broker_url(redis_url: str, number: int) -> str:
    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss"):
        raise SystemExit(f"--redis-url must be redis:// or rediss://, not {redis_url!r}")
    return urlunsplit(parts._replace(path=f"/{number}"))


def django_setup(env: dict, expected_db: str) -> None:
    os.environ.update(env)
    import django

    django.setup()
    from django.conf import settings

    name = str(settings.DATABASES["default"]["NAME"])
    if name != expected_db:  # never run against anything but the database this script created
        raise SystemExit(f"refusing to run: settings point at {name!r}, not the throwaway {expected_db!r}")
    if settings.CELERY_TASK_ALWAYS_EAGER:
        raise SystemExit("refusing to run: Celery is eager in these settings")


def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def measure(args: argparse.Namespace, receiver: Receiver, worker: Worker, n: int, secrets: dict) -> dict:
    """Warm-up, then product and baseline runs in turn."""
    out: dict = {}
    started = time.perf_counter()
    worker.wait_ready(120)
    out["worker_start_s"] = time.perf_counter() - started
    print(f"warm-up: {WARMUP} deliveries through the worker …", file=sys.stderr)
    receiver.reset()
    warm_ids, _ = emit(WARMUP // args.endpoints, 0)
    if not wait_for_count(receiver, len(warm_ids), 120, "warm-up") or wait_final(warm_ids, 60):
        raise SystemExit(f"the warm-up did not finish:\n{worker.log_tail()}")
    runs = []
    for r in range(args.repeats):
        print(f"round {r + 1}/{args.repeats}: product ({n} deliveries) …", file=sys.stderr)
        product = product_phase(receiver, worker, n, args.endpoints, (r + 1) * n, args.timeout)
        product["round"] = r + 1
        product["signatures"] = verify_samples(product.pop("samples"), secrets)
        ids = product.pop("ids")
        if not product["complete"]:
            print(f"product run incomplete; worker log:\n{worker.log_tail()}", file=sys.stderr)
        print(f"  product {product['per_s']:.1f}/s; baseline …", file=sys.stderr)
        baseline = baseline_phase(receiver, ids, args.concurrency, args.timeout)
        baseline["round"] = r + 1
        print(f"  baseline {baseline['per_s']:.1f}/s", file=sys.stderr)
        runs += [product, baseline]
    out["runs"] = runs
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=2000, help="N per run (default 2000)")
    parser.add_argument("--endpoints", type=int, default=2, help="E endpoints; N / E events (default 2)")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 1, help="worker processes and "
                        "baseline threads (default: the number of cores)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=2, help="product, baseline pairs (default 2)")
    parser.add_argument("--profile-deliveries", type=int, default=200, help="K for the profile (default 200)")
    parser.add_argument("--no-profile", action="store_true", help="skip the in-process profile")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""), help="default: REDIS_URL")
    parser.add_argument("--redis-db", type=int, default=13, help="Redis database for the broker (default 13)")
    parser.add_argument("--worker-loglevel", default="INFO", help="(default INFO, as docker-compose runs it)")
    parser.add_argument(
        "--worker-args", default="", help="more celery worker options, e.g. '--prefetch-multiplier 8' (default none)"
    )
    parser.add_argument(
        "--worker-settings",
        default="sora_web.settings.local",
        help="DJANGO_SETTINGS_MODULE of the worker (diagnosis: a module on PYTHONPATH that changes one setting; "
        "default sora_web.settings.local)",
    )
    parser.add_argument(
        "--worker-cprofile",
        metavar="PATH",
        default="",
        help="run the worker under cProfile, written to PATH when it stops (diagnosis; with --pool solo the "
        "tasks run in the profiled process)",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds a phase may take (default 300)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if args.deliveries < args.endpoints or args.endpoints < 1 or args.concurrency < 1 or args.repeats < 1:
        parser.error("need --deliveries ≥ --endpoints ≥ 1, --concurrency ≥ 1 and --repeats ≥ 1")
    if not args.redis_url:
        parser.error("needs a Redis server: set REDIS_URL or pass --redis-url")
    n = args.deliveries - args.deliveries % args.endpoints
    broker = broker_url(args.redis_url, args.redis_db)

    import redis

    redis.Redis.from_url(broker).delete(QUEUE)
    results: dict = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": machine_info(),
        "git": git_state(),
        "loadavg": {"start": loadavg()},
        "deliveries": n,
        "endpoints": args.endpoints,
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "broker": broker,
        "worker_loglevel": args.worker_loglevel,
        "worker_args": args.worker_args,
        "worker_settings": args.worker_settings,
    }
    receiver = Receiver()
    db_url = os.environ.get("DATABASE_URL", "")
    on_postgres = db_url.startswith(("postgres://", "postgresql://", "pgsql://"))
    data_dir = Path(tempfile.mkdtemp(prefix="sora_bench_webhooks_"))
    try:
        with throwaway_postgres(db_url) if on_postgres else throwaway_sqlite() as (url, name):
            results["database"] = "postgresql" if on_postgres else "sqlite"
            env = {
                "DJANGO_SETTINGS_MODULE": "sora_web.settings.local",
                "DJANGO_DEBUG": "0",
                "DATABASE_URL": url,
                "REDIS_URL": broker,
                "SORA_DATA_DIR": str(data_dir),
                "SORA_WEBHOOK_ALLOW_PRIVATE": "1",
                "SORA_FINETUNE_AUTO": "0",
                "SORA_LOG_LEVEL": "WARNING",
            }
            import environ

            django_setup(env, str(environ.Env.db_url_config(url)["NAME"]))
            from django.core.management import call_command
            from django.db import connections

            from webhooks import services

            print(f"throwaway {results['database']} database {name}: migrating …", file=sys.stderr)
            started = time.perf_counter()
            call_command("migrate", verbosity=0)
            results["migrate_s"] = time.perf_counter() - started
            endpoints = [
                services.endpoint_create(url=receiver.url(i), events=["item.approved"], user=None)
                for i in range(args.endpoints)
            ]
            secrets = {urlsplit(e.url).path: e.secret for e in endpoints}
            worker_env = {**os.environ, **env, "SORA_LOG_LEVEL": "INFO", "DJANGO_SETTINGS_MODULE": args.worker_settings}
            extra = shlex.split(args.worker_args)
            worker = Worker(
                worker_env,
                args.concurrency,
                args.worker_loglevel,
                extra,
                data_dir / "worker.log",
                str(Path(args.worker_cprofile).resolve()) if args.worker_cprofile else "",
            )
            try:
                results.update(measure(args, receiver, worker, n, secrets))
            finally:
                worker.stop()  # before the database is dropped
            if not args.no_profile:
                print(f"profile: {args.profile_deliveries} deliveries in this process …", file=sys.stderr)
                results["profile"] = profile_phase(receiver, args.profile_deliveries)
            connections.close_all()
    finally:
        receiver.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        redis.Redis.from_url(broker).delete(QUEUE)
    results["loadavg"]["end"] = loadavg()
    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    summarise(results)
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nJSON written to {args.json}", file=sys.stderr)
    return 0


def summarise(results: dict) -> None:
    product = [r for r in results["runs"] if r["loop"] == "product"]
    baseline = [r for r in results["runs"] if r["loop"] == "baseline"]
    product_rate = statistics.median(r["per_s"] for r in product)
    baseline_rate = statistics.median(r["per_s"] for r in baseline)
    errors = sum(sum(r["errors"].values()) for r in product) + sum(r["signatures"]["failed"] for r in product)
    complete = all(r["complete"] for r in product)
    results["summary"] = {
        "product_per_s": product_rate,
        "baseline_per_s": baseline_rate,
        "ratio": product_rate / baseline_rate if baseline_rate else None,
        "target_per_s": TARGET_PER_S,
        "met": complete and errors == 0 and product_rate >= TARGET_PER_S,
        "product_errors": errors,
    }


def render(results: dict) -> str:
    m, s = results["machine"], results["summary"]
    git = results["git"]
    lines = [
        f"Webhook delivery benchmark — {m['cores']} cores, {m['cpu']}, {m['mem_gib']} GiB, Python {m['python']}",
        f"date: {results['started']} → {results['finished']}; commit {git['commit']}"
        + (f" (+{len(git['uncommitted'])} uncommitted paths)" if git["uncommitted"] else ""),
        f"command: {results['command']}",
        f"load average at start {results['loadavg']['start']}, at end {results['loadavg']['end']}",
        f"database: throwaway {results['database']} (migrated in {results['migrate_s']:.1f} s); broker "
        f"{results['broker']}; worker: celery worker -c {results['concurrency']} -Q {QUEUE} --loglevel "
        f"{results['worker_loglevel']}{' ' + results['worker_args'] if results['worker_args'] else ''}, "
        f"settings {results['worker_settings']}, ready in {results['worker_start_s']:.1f} s",
        f"{results['deliveries']:,} deliveries per run = {results['deliveries'] // results['endpoints']:,} "
        f"item.approved events × {results['endpoints']} endpoints; receiver: asyncio HTTP/1.1 keep-alive, its own "
        "process, answers 200 at once",
        "",
        "| round | loop | deliveries received | wall s | deliveries/s | × baseline | attempt latency ms p50 / p95 "
        "| errors | worker CPU ms/delivery | machine busy |",
        "|" + " --- |" * 10,
    ]
    for r in results["runs"]:
        ratio = f"{r['per_s'] / s['baseline_per_s']:.2f}×" if s["baseline_per_s"] else "—"
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items() if v) or "0"
        if "signatures" in r and r["signatures"]["failed"]:
            errors += f", signatures failed {r['signatures']['failed']}"
        what = "product (worker)" if r["loop"] == "product" else "baseline (sign + POST, threads)"
        cpu = r.get("worker_cpu_ms_per_delivery")
        busy = r.get("machine_busy")
        lines.append(
            f"| {r['round']} | {what} | {r['received']:,} / {r['deliveries']:,}"
            + ("" if r["complete"] else " (TIMED OUT)")
            + f" | {r['wall_s']:.2f} | {r['per_s']:.1f} | {ratio} | {fmt_ms(r['latency_ms']['p50'])} / "
            f"{fmt_ms(r['latency_ms']['p95'])} | {errors} | {fmt_ms(cpu)} | "
            f"{'—' if busy is None else f'{busy:.0%}'} |"
        )
    ratio = f"{s['ratio']:.2f}×" if s["ratio"] else "—"
    lines += [
        "",
        f"median: product **{s['product_per_s']:.1f} deliveries/s**, baseline {s['baseline_per_s']:.1f}/s, "
        f"product / baseline **{ratio}**",
    ]
    for r in results["runs"]:
        if r["loop"] == "product":
            lines.append(
                f"round {r['round']}: writing the outbox (event_emit, not timed) {r['write_s']:.2f} s; queueing the "
                f"{r['deliveries']:,} tasks at the commit took {r['queue_s']:.2f} s of the timed window; "
                f"{r['attempts']:,} attempts logged; signatures of {r['signatures']['verified']} sampled requests "
                f"verified with standardwebhooks, {r['signatures']['failed']} failed"
            )
            if cpu := r.get("cpu_ms_per_delivery_by_process"):
                total = sum(cpu.values())
                lines.append(
                    f"round {r['round']}: CPU ms per delivery, from the commit to the last arrival: "
                    + ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items())
                    + f"; total {total:.2f} ms, so {m['cores']} cores could do at most "
                    f"{m['cores'] * 1000 / total:.0f}/s if CPU were the only limit"
                )
    if p := results.get("profile"):
        lines += [
            "",
            f"Profile — {p['deliveries']} deliveries sent one after another in the bench process by "
            "services.delivery_send (no Celery):",
            f"- {p['ms_per_delivery']:.2f} ms per delivery ({p['serial_per_s']:.0f}/s serial, "
            f"{p['cpu_ms_per_delivery']:.2f} ms CPU in this process), of which: database "
            f"{p['db_ms_per_delivery']:.2f} ms ({p['queries_per_delivery']:.1f} queries; a query in autocommit "
            f"includes its commit) + {p['commit_ms_per_delivery']:.2f} ms for "
            f"{p['commits_per_delivery']:.1f} COMMIT of an atomic block, POST "
            f"{p['post_ms_per_delivery']:.2f} ms (address check {p['resolve_ms_per_delivery']:.2f} ms of it), "
            f"the rest {p['other_ms_per_delivery']:.2f} ms (signing, ORM, Python)",
            f"- alone: address check (getaddrinfo + rules) {p['resolve_alone_ms']:.3f} ms, signing "
            f"{p['sign_alone_ms']:.3f} ms; {p['succeeded']}/{p['deliveries']} succeeded",
        ]
        product = [r for r in results["runs"] if r["loop"] == "product"]
        cpu = [r["worker_cpu_ms_per_delivery"] for r in product if r["worker_cpu_ms_per_delivery"] is not None]
        if cpu:
            lines.append(
                f"- the worker spent {statistics.median(cpu):.2f} ms CPU per delivery (all its processes) against "
                f"{p['cpu_ms_per_delivery']:.2f} ms for delivery_send alone here: the difference is the cost of "
                "running it as a Celery task (message, ack, signals, logging; the database connection is kept "
                "between tasks by CELERY_DB_REUSE_MAX)"
            )
    lines += [
        "",
        f"Target (PRODUCT.md §8): ≥ {TARGET_PER_S} deliveries/s to a local receiver, every one delivered — "
        f"{'[met]' if s['met'] else '[NOT met]'} {s['product_per_s']:.1f}/s, {s['product_errors']} errors",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
