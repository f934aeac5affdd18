"""Webhooks sent by a real Celery worker (PRODUCT.md §7, §8): approvals in this process write the outbox,
a `celery -A sora_web worker -Q webhooks` process sends it to a real receiver on loopback, and the
`standardwebhooks` library verifies every signature.

Real parts: the worker process on the test database, the Redis broker of REDIS_URL (a database number of
its own, so another test run's webhook worker cannot take these tasks), the receiver's HTTP server. This
process publishes for real (not eager) and plays beat where a test needs the sweep.

The worker runs with `sora_web.settings.local`, not `sora_web.settings.test`: the test settings make Celery
eager, and an eager worker would run the retry it queues (with its countdown) at once, find it not yet
due and drop it, so a delivery would wait for the sweep instead of its back-off.
"""

import logging
import os
import signal
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection

from annotations.models import Item, Review
from tests.factories import ItemFactory
from webhooks import services
from webhooks.models import Delivery, Endpoint

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
RETRY_SCHEDULE = "0.5,0.5,1,1,2"  # seconds, ±20%: a delivery fails for good about 5 s after its first try
WORKER_LOG_BYTES = 5  # the worker's SORA_WEBHOOK_LOG_BYTES: its attempts log 5 bytes, this process's 2,048
DEAD_BROKER = "redis://127.0.0.1:9/0"  # nothing listens on the discard port


def database_url() -> str:
    """The test database, for the worker process."""
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
        user = quote(db["USER"] or "", safe="")
        return f"postgres://{user}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


def broker_url() -> str:
    """REDIS_URL with a database number of this run's own (from SORA_TEST_DB_SUFFIX, 1–15): every webhook
    worker consumes the queue named `webhooks`, and one started by another test run on the same Redis
    would take these tasks and find no such delivery in its database."""
    parts = urlsplit(django_settings.REDIS_URL)
    if parts.scheme not in ("redis", "rediss"):
        return django_settings.REDIS_URL
    number = 1 + zlib.crc32(os.environ.get("SORA_TEST_DB_SUFFIX", "").encode()) % 15
    return urlunsplit(parts._replace(path=f"/{number}"))


def wait_for(condition, timeout: float, what: str, worker=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.1)
    log = f"\n--- worker log ---\n{worker.log_tail()}" if worker is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{log}")


def use_broker(url: str) -> None:
    """Publish from this process to `url` from now on: Celery keeps a connection pool and a producer pool per
    app, made on first use from broker_url, so both are dropped (kombu keeps the old ones, by URL, for later)."""
    from sora_web.celery import app

    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None


class Worker:
    def __init__(self, process: subprocess.Popen, log: Path) -> None:
        self.process, self.log = process, log

    def log_tail(self, chars: int = 8_000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # warm shutdown: it finishes the attempt in hand
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own process group: the pool's children too
            self.process.wait(timeout=10)


@pytest.fixture
def worker(transactional_db, tmp_path):
    """A real webhook worker, ready, and this process publishing to its broker, not eager. Both are undone
    afterwards, whatever the test did."""
    from sora_web.celery import app

    url = broker_url()
    redis.Redis.from_url(url).delete("webhooks")  # messages a killed earlier run left for deliveries now gone
    saved = {name: app.conf[name] for name in ("task_always_eager", "broker_url")}
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "sora_web.settings.local",  # not eager (see the module docstring)
        "DJANGO_DEBUG": "0",
        "DATABASE_URL": database_url(),
        "REDIS_URL": url,
        "SORA_DATA_DIR": str(tmp_path),
        "SORA_WEBHOOK_ALLOW_PRIVATE": "1",  # the receiver listens on loopback
        "SORA_WEBHOOK_RETRY_SCHEDULE": RETRY_SCHEDULE,
        "SORA_WEBHOOK_LOG_BYTES": str(WORKER_LOG_BYTES),
        "SORA_FINETUNE_AUTO": "0",
    }
    log = tmp_path / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "sora_web", "worker", "-Q", "webhooks", "--concurrency", "2"]
    command += ["--loglevel", "INFO", "--hostname", f"webhooks-test-{time.monotonic_ns()}@%h"]
    running = None
    try:
        app.conf.task_always_eager = False
        use_broker(url)
        with log.open("a") as output:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        running = Worker(process, log)
        wait_for(lambda: " ready." in running.log_tail(), 90, "the worker to be ready", running)
        yield running
    finally:
        if running is not None:
            running.stop()
        app.conf.task_always_eager = saved["task_always_eager"]
        use_broker(saved["broker_url"])
        if running is not None:
            print(f"--- worker log ---\n{running.log_tail()}")  # shown when the test failed


@pytest.fixture
def endpoint(receiver, manager):
    receiver.answer_body = b"received"
    return services.endpoint_create(url=receiver.url, events=["item.approved"], user=manager)


def logged_by_the_worker(attempt) -> bool:
    """The attempt's log holds as much of the receiver's answer as the worker's SORA_WEBHOOK_LOG_BYTES allows
    ("recei"), not what this process's 2,048 would ("received"): the worker sent it."""
    return attempt.response_body == "received"[:WORKER_LOG_BYTES]


def approve_new(approve, domain, n: int):
    """Create an item and approve it (each approval commits its outbox row with it)."""
    return approve(ItemFactory(domain=domain, draft=f"Draft {n}: your parcel left today."), f"Final {n}.")


def deliveries_finished(count: int):
    def check():
        deliveries = list(Delivery.objects.order_by("id"))
        done = len(deliveries) == count and all(d.status != Delivery.Status.PENDING for d in deliveries)
        return deliveries if done else None

    return check


def no_more_requests(receiver, count: int, seconds: float = 1.0) -> None:
    """Nothing arrives after the last expected request (a duplicate send would, within a retry step)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert len(receiver.requests) == count, receiver.webhook_ids()
        time.sleep(0.1)


def test_approvals_are_delivered_by_the_worker_signed(worker, endpoint, receiver, domain, approve):
    reviews = [approve_new(approve, domain, n) for n in range(3)]

    deliveries = wait_for(deliveries_finished(3), 30, "three deliveries to finish", worker)
    events = receiver.verified(endpoint.secret)  # raises unless every signature verifies
    assert sorted(e["data"]["item_id"] for e in events) == sorted(r.item_id for r in reviews)
    assert {e["type"] for e in events} == {"item.approved"}
    assert sorted(receiver.webhook_ids()) == sorted(d.message_id for d in deliveries)
    for delivery in deliveries:
        assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 1, 200)
        [attempt] = delivery.attempt_log.all()
        assert attempt.status_code == 200 and logged_by_the_worker(attempt)
    by_item = {e["data"]["item_id"]: e["data"] for e in events}
    for n, review in enumerate(reviews):
        assert by_item[review.item_id]["final_text"] == f"Final {n}." and by_item[review.item_id]["edited"] is True
    no_more_requests(receiver, 3)


def test_a_500_then_200_delivers_once_under_one_webhook_id(worker, endpoint, receiver, domain, approve):
    receiver.script = [500]  # then the default, 200

    review = approve_new(approve, domain, 0)

    [delivery] = wait_for(deliveries_finished(1), 30, "the delivery to finish", worker)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 2, 200)
    assert receiver.webhook_ids() == [delivery.message_id] * 2
    assert receiver.requests[0]["body"] == receiver.requests[1]["body"]
    assert [e["data"]["item_id"] for e in receiver.verified(endpoint.secret)] == [review.item_id] * 2
    attempts = list(delivery.attempt_log.all())
    assert [(a.number, a.status_code) for a in attempts] == [(1, 500), (2, 200)]  # exactly one 2xx
    assert all(logged_by_the_worker(a) for a in attempts)
    gap = (attempts[1].started_at - attempts[0].started_at).total_seconds()
    assert 0.4 <= gap < 10, gap  # the back-off (0.5 s ± 20%) was waited, in the worker
    no_more_requests(receiver, 2)


def test_a_receiver_that_was_down_gets_every_event_from_the_worker_retries(worker, endpoint, receiver, domain, approve):
    """Driven by the worker's own retries alone (no sweep, no beat): the receiver is down for the first two
    tries of every delivery and back well within the retry schedule."""
    receiver.stop()
    reviews = [approve_new(approve, domain, n) for n in range(4)]

    def two_failures_each():
        failed = [d.attempt_log.filter(status_code__isnull=True).count() for d in Delivery.objects.all()]
        return len(failed) == 4 and min(failed) >= 2

    wait_for(two_failures_each, 30, "two refused tries of every delivery", worker)
    assert receiver.requests == []
    receiver.start()  # the same port

    deliveries = wait_for(deliveries_finished(4), 30, "every delivery to finish", worker)
    assert {d.status for d in deliveries} == {"succeeded"}
    events = receiver.verified(endpoint.secret)
    assert sorted(e["data"]["item_id"] for e in events) == sorted(r.item_id for r in reviews)
    ids = receiver.webhook_ids()
    assert len(set(ids)) == 4 and sorted(ids) == sorted(d.message_id for d in deliveries)  # one success each
    for delivery in deliveries:
        log = list(delivery.attempt_log.all())
        assert [a.number for a in log] == list(range(1, delivery.attempts + 1)) and delivery.attempts >= 3
        assert all("ConnectError" in a.error for a in log[:-1]) and log[-1].status_code == 200
        assert logged_by_the_worker(log[-1])
    assert Endpoint.objects.get().failing_since is None  # healthy again
    no_more_requests(receiver, 4)


@contextmanager
def broker_down():
    """This process's Celery publishes to a port nobody listens on (the worker keeps the real broker)."""
    from sora_web.celery import app

    working = app.conf.broker_url
    use_broker(DEAD_BROKER)
    try:
        yield
    finally:
        use_broker(working)


def test_no_event_is_lost_when_the_broker_is_down_at_approval(
    worker, endpoint, receiver, domain, approve, settings, caplog
):
    settings.SORA_WEBHOOK_SWEEP_GRACE_SECONDS = 0  # the sweep in this process takes what is due now
    with broker_down(), caplog.at_level(logging.ERROR, logger="webhooks.services"):
        review = approve_new(approve, domain, 0)

    assert Item.objects.get(pk=review.item_id).status == Item.Status.APPROVED  # the approval went through
    assert Review.objects.filter(pk=review.pk).exists()
    assert any("could not queue webhook delivery" in r.getMessage() for r in caplog.records)  # it really failed
    time.sleep(0.5)  # the worker is idle: nothing reached it
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts, receiver.requests) == ("pending", 0, [])

    assert services.deliveries_sweep() == {"queued": 1}  # beat's job, done here, with the broker back

    [delivery] = wait_for(deliveries_finished(1), 30, "the swept delivery to finish", worker)
    assert (delivery.status, delivery.attempts) == ("succeeded", 1)
    [event] = receiver.verified(endpoint.secret)
    assert event["data"]["item_id"] == review.item_id and receiver.webhook_ids() == [delivery.message_id]
    assert logged_by_the_worker(delivery.attempt_log.get())
    no_more_requests(receiver, 1)
