"""/prometheus/metrics (docs/deploy.md, "What to watch"): who may scrape it, and that what it says matches the
database, the broker's queues and the workers' heartbeats.

Real parts: the database; Redis as two brokers, the redis-server binary the embedded default runs (on a socket
of this test's own, so it runs everywhere and can be stopped and started again) and, for tests marked
`redis`, REDIS_URL on a database number of this run's own (as tests/webhooks/test_worker.py chooses it); a
real `celery worker` process for the heartbeat. The output is parsed with prometheus_client's own parser.
"""

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.utils import timezone
from kombu import Connection
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from annotations.models import Generation, Item
from models_app.models import DatasetSnapshot, FineTuneJob, ModelVersion
from sora_web import embedded_redis, heartbeats
from sora_web.celery import app
from sora_web.heartbeats import HeartbeatSender, broker_connection, heartbeat_remove, heartbeat_write, heartbeats_read
from tests.factories import DomainFactory, ItemFactory, UserFactory
from tests.webhooks.test_worker import ROOT, Worker, broker_url, wait_for
from webhooks.models import Delivery, Endpoint

URL = "/prometheus/metrics"
TOKEN = "scrape-token-for-tests"
DEAD_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1
QUEUES = ["default", "inference", "training", "webhooks"]


# --- helpers -------------------------------------------------------------------------------------------------


class Scrape:
    """The parsed exposition: families by name, and each sample's value by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in self.families.values()
            for sample in family.samples
        }

    def value(self, name: str, **labels) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def labelled(self, name: str, label: str) -> dict[str, float]:
        """{label value: sample value} for every sample of `name`."""
        return {dict(labels)[label]: value for (sample, labels), value in self.samples.items() if sample == name}


def scrape(client) -> Scrape:
    response = client.get(URL)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == CONTENT_TYPE_LATEST
    return Scrape(response.content.decode())


def raw_redis(url: str) -> redis.Redis:
    """A plain client on the broker's Redis, to look behind kombu's back."""
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(url)


@pytest.fixture
def staff_client(client, db):
    client.force_login(UserFactory(username="olga", is_staff=True))
    return client


@pytest.fixture
def embedded_broker():
    """A real redis-server of this test's own on a unix socket (a short path: sockets allow ~100 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="sora-prom-"))
    server = Server(folder / "redis.sock")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


class Server:
    def __init__(self, socket: Path) -> None:
        self.socket, self.url = socket, f"redis+socket://{socket}"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = embedded_redis.start(self.socket)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture(params=["embedded", pytest.param("redis_url", marks=pytest.mark.redis)])
def broker(request, settings):
    """The URL of a real Redis broker nobody else uses, set as this process's CELERY_BROKER_URL."""
    url = request.getfixturevalue("embedded_broker").url if request.param == "embedded" else broker_url()
    settings.CELERY_BROKER_URL = url
    return url


def purge(url: str) -> None:
    with Connection(url) as conn:
        for queue in QUEUES:
            conn.default_channel.queue_purge(queue)


# --- who may scrape ------------------------------------------------------------------------------------------


def test_nobody_signed_in_and_no_token_gets_401(client, db, settings):
    settings.SORA_METRICS_TOKEN = TOKEN

    response = client.get(URL)

    assert response.status_code == 401
    assert response["Content-Type"].startswith("text/plain")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"sora_" not in response.content


@pytest.mark.parametrize(
    "header",
    [f"Bearer {TOKEN}x", "Bearer ", f"Token {TOKEN}", f"Basic {TOKEN}", "Bearer sésame-ünïcode", TOKEN],
    ids=["wrong", "empty", "other-scheme", "basic", "non-ascii", "no-scheme"],
)
def test_a_wrong_or_malformed_bearer_gets_401_not_500(client, db, settings, header):
    settings.SORA_METRICS_TOKEN = TOKEN

    response = client.get(URL, HTTP_AUTHORIZATION=header)

    assert response.status_code == 401
    assert b"sora_" not in response.content


def test_the_right_bearer_token_gets_the_metrics(client, db, settings):
    settings.SORA_METRICS_TOKEN = TOKEN

    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"] == CONTENT_TYPE_LATEST
    assert "sora_items" in Scrape(response.content.decode()).families
    assert "no-store" in response["Cache-Control"]


def test_without_a_configured_token_no_bearer_is_accepted(client, db, settings):
    settings.SORA_METRICS_TOKEN = ""

    assert client.get(URL, HTTP_AUTHORIZATION="Bearer ").status_code == 401
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer anything").status_code == 401


def test_a_staff_session_gets_the_metrics_without_a_token(staff_client, settings):
    settings.SORA_METRICS_TOKEN = ""

    assert staff_client.get(URL).status_code == 200


def test_a_signed_in_user_who_is_not_staff_is_refused(client, reviewer, settings):
    settings.SORA_METRICS_TOKEN = TOKEN
    client.force_login(reviewer)

    refused = client.get(URL)
    with_token = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert refused.status_code == 403 and b"sora_" not in refused.content
    assert with_token.status_code == 200  # the scraper's token works whoever else is signed in


def test_only_get_and_head(staff_client):
    assert staff_client.post(URL).status_code == 405
    assert staff_client.head(URL).status_code == 200


# --- the review loop, from the database ----------------------------------------------------------------------


def make_job(domain, status: str, version: ModelVersion) -> FineTuneJob:
    snapshot = DatasetSnapshot.objects.create(
        domain=domain, manifest=[], sha256=uuid.uuid4().hex, train_count=0, heldout_count=0, new_count=0
    )
    return FineTuneJob.objects.create(
        domain=domain, run_key=uuid.uuid4(), status=status, snapshot=snapshot, base_version=version
    )


def test_the_review_loop_gauges_count_what_is_in_the_database(staff_client, customer_service):
    news, notes = DomainFactory(slug="prom_news"), DomainFactory(slug="prom_notes")
    for status, count in [("ready", 3), ("approved", 2), ("failed", 1)]:
        ItemFactory.create_batch(count, domain=news, status=status)
    ItemFactory(domain=notes, status="queued", draft="")
    generating = ItemFactory(domain=notes, status="generating", draft="")
    Generation.objects.create(item=generating, status=Generation.Status.STREAMING)
    for _ in range(2):
        Generation.objects.create(item=ItemFactory(domain=notes, status="queued", draft=""), status="queued")
    Generation.objects.create(item=generating, status=Generation.Status.FAILED)  # finished: not in flight

    version = ModelVersion.objects.create(name="prom-base", base_model="/models/base")
    make_job(news, "running", version)
    make_job(notes, "succeeded", version)
    make_job(notes, "succeeded", version)
    make_job(notes, "failed", version)

    healthy = Endpoint.objects.create(url="https://a.example/hook", events=["item.approved"], secret="s1")
    Endpoint.objects.create(url="https://b.example/hook", events=["item.approved"], secret="s2")
    Endpoint.objects.create(
        url="https://c.example/hook", secret="s3", is_active=False, disabled_at=timezone.now(), failing_since=None
    )
    Endpoint.objects.filter(url="https://b.example/hook").update(failing_since=timezone.now())
    Endpoint.objects.create(url="https://d.example/hook", secret="s4", is_active=False)  # turned off by hand
    for n, status in enumerate(["pending", "pending", "succeeded", "failed", "failed", "failed"]):
        Delivery.objects.create(
            endpoint=healthy, event_type="item.approved", message_id=f"msg_{n}", body="{}", status=status
        )
    Delivery.objects.filter(message_id="msg_0").update(created_at=timezone.now() - timedelta(minutes=10))

    metrics = scrape(staff_client)

    assert metrics.labelled("sora_items", "status") != {}
    news_items = {s: metrics.value("sora_items", domain="prom_news", status=s) for s in Item.Status.values}
    assert news_items == {
        "queued": 0, "generating": 0, "ready": 3, "in_review": 0, "approved": 2, "rejected": 0, "failed": 1,
    }  # fmt: skip
    assert metrics.value("sora_items", domain="prom_notes", status="queued") == 3
    assert metrics.value("sora_items", domain="prom_notes", status="generating") == 1
    assert {metrics.value("sora_items", domain="customer_service", status=s) for s in Item.Status.values} == {0}
    assert metrics.labelled("sora_generations_in_flight", "status") == {"queued": 2, "streaming": 1}
    assert metrics.labelled("sora_finetune_jobs", "status") == {
        "queued": 0, "running": 1, "evaluating": 0, "succeeded": 2, "failed": 1, "cancelled": 0,
    }  # fmt: skip
    assert metrics.labelled("sora_webhook_deliveries", "status") == {"pending": 2, "succeeded": 1, "failed": 3}
    assert 600 <= metrics.value("sora_webhook_oldest_pending_delivery_age_seconds") < 660
    assert metrics.value("sora_webhook_endpoints_disabled") == 1
    assert metrics.value("sora_webhook_endpoints_failing") == 1
    for name in ("sora_items", "sora_broker_up", "sora_webhook_deliveries"):
        assert metrics.families[name].documentation, name  # HELP text


def test_no_pending_delivery_reads_as_age_zero(staff_client):
    assert scrape(staff_client).value("sora_webhook_oldest_pending_delivery_age_seconds") == 0


def test_the_database_queries_do_not_grow_with_the_rows(staff_client, django_assert_max_num_queries):
    ItemFactory.create_batch(20)

    # Sessions and the user: 2; the gauges: 7. Not one per item, domain or delivery.
    with django_assert_max_num_queries(9):
        scrape(staff_client)


# --- the broker: up or not, queue lengths --------------------------------------------------------------------


def test_a_broker_that_does_not_answer_reads_as_down_and_the_rest_is_still_served(staff_client, settings, caplog):
    settings.CELERY_BROKER_URL = DEAD_BROKER
    ItemFactory(domain=DomainFactory(slug="prom_down"), status="ready")

    with caplog.at_level(logging.WARNING, logger="sora_web.monitoring"):
        metrics = scrape(staff_client)

    assert metrics.value("sora_broker_up") == 0
    assert "sora_celery_queue_length" not in metrics.families and "sora_workers_alive" not in metrics.families
    assert metrics.value("sora_items", domain="prom_down", status="ready") == 1
    assert any("broker did not answer" in r.getMessage() for r in caplog.records)


def test_the_configured_broker_reads_as_up(staff_client):
    """The suite's own broker: memory:// without REDIS_URL, REDIS_URL's Redis with it."""
    metrics = scrape(staff_client)

    assert metrics.value("sora_broker_up") == 1
    assert sorted(metrics.labelled("sora_celery_queue_length", "queue")) == QUEUES


@pytest.mark.filterwarnings("ignore::celery.exceptions.AlwaysEagerIgnored")  # publishing for real is the point
def test_queue_lengths_count_the_messages_waiting_in_redis(staff_client, broker):
    purge(broker)
    try:
        with Connection(broker) as conn:  # real task messages, routed by CELERY_TASK_ROUTES
            for _ in range(3):
                app.send_task("annotations.leases_expire", connection=conn)
            app.send_task("annotations.generate_draft", args=[1], connection=conn)
            app.send_task("annotations.generate_draft", args=[2], connection=conn, priority=9)
            app.send_task("models_app.finetune", args=[3], connection=conn)
        # The urgent draft waits in kombu's list for its priority step, not in `inference` itself.
        assert raw_redis(broker).llen("inference") == 1 and raw_redis(broker).llen("inference\x06\x169") == 1

        metrics = scrape(staff_client)

        assert metrics.value("sora_broker_up") == 1
        assert metrics.labelled("sora_celery_queue_length", "queue") == {
            "default": 3, "inference": 2, "training": 1, "webhooks": 0,
        }  # fmt: skip
    finally:
        purge(broker)


# --- worker heartbeats ---------------------------------------------------------------------------------------


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@prom-test"


def test_heartbeats_are_written_read_aged_and_forgotten(broker):
    client = raw_redis(broker)
    alive, silent, long_gone = unique("alive"), unique("silent"), unique("gone")
    now = time.time()
    # Another worker heard from two minutes and two days ago (as a dead one's entry would be).
    client.zadd(heartbeats.HEARTBEATS_KEY, {silent: now - 120, long_gone: now - 2 * heartbeats.FORGET_AFTER_S})
    client.hset(heartbeats.QUEUES_KEY, mapping={silent: "inference", long_gone: "training"})
    try:
        heartbeat_write(client, hostname=alive, queues=["webhooks", "default"])

        beats = {beat.worker: beat for beat in heartbeats_read(client)}

        assert beats[alive].queues == ("default", "webhooks") and beats[alive].fresh
        assert 0 <= beats[alive].age_s < 5
        assert beats[silent].queues == ("inference",) and not beats[silent].fresh
        assert 115 < beats[silent].age_s < 130
        assert long_gone not in beats  # and the write swept it out of both keys
        assert client.zscore(heartbeats.HEARTBEATS_KEY, long_gone) is None
        assert not client.hexists(heartbeats.QUEUES_KEY, long_gone)

        heartbeat_remove(client, hostname=alive)

        assert alive not in {beat.worker for beat in heartbeats_read(client)}
    finally:
        for name in (alive, silent, long_gone):
            heartbeat_remove(client, hostname=name)


def test_workers_alive_counts_fresh_heartbeats_per_queue(staff_client, embedded_broker, settings):
    settings.CELERY_BROKER_URL = embedded_broker.url
    client = raw_redis(embedded_broker.url)
    heartbeat_write(client, hostname="default@web1", queues=["default", "webhooks"])
    heartbeat_write(client, hostname="gpu@gpu1", queues=["inference", "training"])
    client.zadd(heartbeats.HEARTBEATS_KEY, {"gpu@gpu1": time.time() - 300})  # silent for five minutes

    metrics = scrape(staff_client)

    assert metrics.labelled("sora_workers_alive", "queue") == {
        "default": 1,
        "webhooks": 1,
        "inference": 0,
        "training": 0,
    }
    ages = metrics.labelled("sora_worker_heartbeat_age_seconds", "worker")
    assert ages["default@web1"] < 5 and 295 < ages["gpu@gpu1"] < 310
    assert metrics.value("sora_worker_heartbeat_age_seconds", worker="gpu@gpu1", queues="inference,training") > 60


def test_no_worker_means_zero_alive_for_every_queue(staff_client, embedded_broker, settings):
    settings.CELERY_BROKER_URL = embedded_broker.url

    metrics = scrape(staff_client)

    assert metrics.labelled("sora_workers_alive", "queue") == dict.fromkeys(QUEUES, 0)
    assert metrics.labelled("sora_worker_heartbeat_age_seconds", "worker") == {}


def test_the_sender_rides_out_redis_going_away_and_coming_back(embedded_broker, caplog):
    client = raw_redis(embedded_broker.url)
    name = unique("sender")
    sender = HeartbeatSender(
        connect=lambda: broker_connection(app, embedded_broker.url),
        hostname=name,
        queues=lambda: ["inference"],
        interval_s=0.1,
    )

    def written():
        try:
            return client.zscore(heartbeats.HEARTBEATS_KEY, name) is not None
        except redis.ConnectionError:
            return False

    def warned():
        return any("cannot reach the broker's Redis" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.INFO, logger="sora_web.heartbeats"):
        sender.start()
        try:
            wait_for(written, 10, "the first heartbeat")
            embedded_broker.stop()  # gone, and its data with it (no persistence)
            wait_for(warned, 20, "the sender to notice")
            assert sender.thread.is_alive()
            embedded_broker.start()
            assert not written()  # a fresh, empty server…
            wait_for(written, 20, "a heartbeat on the restarted server")  # …that the sender writes to again
            assert sender.thread.is_alive()
        finally:
            sender.stop()

    assert not written()  # a clean stop removes the entry
    assert sum("cannot reach" in r.getMessage() for r in caplog.records) == 1  # once per outage, not per beat
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_a_sender_whose_broker_is_down_logs_and_stops_cleanly(caplog):
    sender = HeartbeatSender(
        connect=lambda: broker_connection(app, DEAD_BROKER), hostname=unique("dead"), queues=lambda: ["default"]
    )

    with caplog.at_level(logging.WARNING, logger="sora_web.heartbeats"):
        assert sender.beat() is False
        sender.stop()  # nothing to remove it from: logged, not raised

    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot reach" in m for m in messages) and any("could not remove" in m for m in messages)


@pytest.mark.slow
@pytest.mark.redis
def test_a_real_worker_appears_in_the_metrics_and_leaves_when_stopped(staff_client, settings, tmp_path):
    url = broker_url()
    settings.CELERY_BROKER_URL = url
    queue = f"prom-heartbeat-{uuid.uuid4().hex[:8]}"  # consumed by nobody else, so it takes nobody's tasks
    hostname = f"{queue}@prom-test"
    env = {
        **{name: value for name, value in os.environ.items() if name != "DATABASE_URL"},
        "DJANGO_SETTINGS_MODULE": "sora_web.settings.local",
        "DJANGO_DEBUG": "0",
        "REDIS_URL": url,
        "SORA_DATA_DIR": str(tmp_path),  # its own SQLite: the heartbeat needs no database
    }
    command = [sys.executable, "-m", "celery", "-A", "sora_web", "worker", "-Q", queue, "--pool", "solo"]
    command += ["--loglevel", "INFO", "--hostname", hostname]
    log = tmp_path / "worker.log"
    with log.open("a") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    worker = Worker(process, log)
    try:
        wait_for(lambda: " ready." in worker.log_tail(), 90, "the worker to be ready", worker)

        def listed():
            metrics = scrape(staff_client)
            return metrics if hostname in metrics.labelled("sora_worker_heartbeat_age_seconds", "worker") else None

        metrics = wait_for(listed, 20, "the worker's heartbeat in the metrics", worker)
        assert metrics.value("sora_worker_heartbeat_age_seconds", worker=hostname, queues=queue) < heartbeats.FRESH_S
        assert metrics.value("sora_workers_alive", queue=queue) == 1

        worker.stop()  # warm shutdown: the bootstep removes its entry

        assert process.returncode == 0, worker.log_tail()
        metrics = scrape(staff_client)
        assert hostname not in metrics.labelled("sora_worker_heartbeat_age_seconds", "worker")
        assert queue not in metrics.labelled("sora_workers_alive", "queue")
    finally:
        worker.stop()
        print(f"--- worker log ---\n{worker.log_tail()}")
