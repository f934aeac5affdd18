"""What /prometheus/metrics reports (docs/deploy.md, "What to watch").

Everything is read when Prometheus scrapes: queue lengths and worker heartbeats from the broker, the review
loop's state from the database, into a fresh registry per scrape. Nothing is counted in this process, so
every Daphne process gives the same answer and a restart loses nothing.

The broker's part is optional: when Redis cannot be reached, `sora_broker_up` is 0 and the queue and worker
series are left out, and the database's gauges are still served. A database that fails fails the scrape
(Prometheus then reports the target down), which is the truth.

Cost per scrape: one broker connection (one round trip per queue, one for the heartbeats) and seven
aggregate queries (GROUP BY status), whatever the number of rows.
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, Min, Q
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from annotations.models import Domain, Generation, Item
from models_app.models import FineTuneJob
from webhooks.models import Delivery, Endpoint

from .heartbeats import BROKER_ERRORS, Heartbeat, broker_connection, broker_redis, heartbeats_read

logger = logging.getLogger(__name__)


def metrics_text() -> bytes:
    """The Prometheus text exposition of everything below, collected now."""
    registry = CollectorRegistry(auto_describe=False)  # no collect() at registration, only at generate_latest
    registry.register(SoraCollector())
    return generate_latest(registry)


class SoraCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from broker_metrics()
        yield from review_loop_metrics()


def celery_queues() -> list[str]:
    """The queues tasks are routed to (CELERY_TASK_ROUTES) and the default queue."""
    names = {settings.CELERY_TASK_DEFAULT_QUEUE}
    names.update(route["queue"] for route in settings.CELERY_TASK_ROUTES.values() if "queue" in route)
    return sorted(names)


@dataclass
class BrokerState:
    queue_lengths: dict[str, int]
    heartbeats: list[Heartbeat] | None  # None: the broker is not Redis (memory:// in tests), nowhere to keep them


def broker_state(queues: list[str]) -> BrokerState | None:
    """Queue lengths and heartbeats from the broker in CELERY_BROKER_URL; None when it cannot be reached."""
    from .celery import app

    try:
        with broker_connection(app, settings.CELERY_BROKER_URL) as conn:
            client = broker_redis(conn)
            channel = conn.default_channel
            # kombu's own count (a declare is a no-op on Redis): the queue's list plus the lists kombu keeps
            # per priority step (`<queue>\x06\x16<n>`), under any key prefix the transport options set.
            lengths = {name: channel.queue_declare(queue=name).message_count for name in queues}
            heartbeats = heartbeats_read(client) if client is not None else None
    except BROKER_ERRORS as exc:
        logger.warning("metrics: the broker did not answer: %s", exc)
        return None
    return BrokerState(queue_lengths=lengths, heartbeats=heartbeats)


def broker_metrics() -> Iterator[Metric]:
    queues = celery_queues()
    state = broker_state(queues)
    yield GaugeMetricFamily(
        "sora_broker_up", "1 when the Celery broker answered this scrape, else 0.", value=int(state is not None)
    )
    if state is None:
        return
    lengths = GaugeMetricFamily(
        "sora_celery_queue_length", "Tasks waiting in the broker for a worker, per Celery queue.", labels=["queue"]
    )
    for name, length in state.queue_lengths.items():
        lengths.add_metric([name], length)
    yield lengths
    if state.heartbeats is None:
        return
    ages = GaugeMetricFamily(
        "sora_worker_heartbeat_age_seconds",
        "Seconds since each Celery worker's last heartbeat (sent every 15 s; stopped workers drop out, "
        "dead ones stay for a day).",
        labels=["worker", "queues"],
    )
    alive = GaugeMetricFamily(
        "sora_workers_alive",
        "Celery workers consuming the queue whose last heartbeat is at most 60 s old.",
        labels=["queue"],
    )
    counts = dict.fromkeys(queues, 0)
    for beat in state.heartbeats:
        ages.add_metric([beat.worker, ",".join(beat.queues)], beat.age_s)
        for queue in beat.queues:
            counts[queue] = counts.get(queue, 0) + int(beat.fresh)
    for queue, count in sorted(counts.items()):
        alive.add_metric([queue], count)
    yield ages
    yield alive


def _by_status(queryset, statuses) -> dict[str, int]:
    """Rows per status, every status present (0 included), in one GROUP BY."""
    counts = dict.fromkeys(statuses, 0)
    for row in queryset.values("status").annotate(n=Count("id")).order_by():
        counts[row["status"]] = row["n"]
    return counts


def review_loop_metrics() -> Iterator[Metric]:
    items = GaugeMetricFamily("sora_items", "Items per domain and status.", labels=["domain", "status"])
    slugs = dict(Domain.objects.values_list("id", "slug"))
    per_domain = {(domain_id, status): 0 for domain_id in slugs for status in Item.Status.values}
    for row in Item.objects.values("domain_id", "status").annotate(n=Count("id")).order_by():
        per_domain[(row["domain_id"], row["status"])] = row["n"]
    for (domain_id, status), count in sorted(per_domain.items(), key=lambda kv: (slugs[kv[0][0]], kv[0][1])):
        items.add_metric([slugs[domain_id], status], count)
    yield items

    in_flight = GaugeMetricFamily(
        "sora_generations_in_flight",
        "Drafts a worker is writing (streaming) or that wait for one (queued).",
        labels=["status"],
    )
    live = Generation.objects.filter(status__in=Generation.LIVE_STATUSES)
    for status, count in _by_status(live, Generation.LIVE_STATUSES).items():
        in_flight.add_metric([status], count)
    yield in_flight

    jobs = GaugeMetricFamily("sora_finetune_jobs", "Fine-tune jobs per status.", labels=["status"])
    for status, count in _by_status(FineTuneJob.objects.all(), FineTuneJob.Status.values).items():
        jobs.add_metric([status], count)
    yield jobs

    deliveries = GaugeMetricFamily(
        "sora_webhook_deliveries",
        "Webhook deliveries per status (rows in the outbox; failed: the retry schedule ran out).",
        labels=["status"],
    )
    for status, count in _by_status(Delivery.objects.all(), Delivery.Status.values).items():
        deliveries.add_metric([status], count)
    yield deliveries

    oldest = Delivery.objects.filter(status=Delivery.Status.PENDING).aggregate(at=Min("created_at"))["at"]
    yield GaugeMetricFamily(
        "sora_webhook_oldest_pending_delivery_age_seconds",
        "Age of the oldest webhook delivery not yet delivered nor given up (0 when none is pending).",
        value=(timezone.now() - oldest).total_seconds() if oldest else 0.0,
    )

    endpoints = Endpoint.objects.aggregate(
        disabled=Count("id", filter=Q(is_active=False, disabled_at__isnull=False)),
        failing=Count("id", filter=Q(is_active=True, failing_since__isnull=False)),
    )
    yield GaugeMetricFamily(
        "sora_webhook_endpoints_disabled",
        "Webhook endpoints Sora turned off after failing for SORA_WEBHOOK_DISABLE_AFTER_SECONDS.",
        value=endpoints["disabled"],
    )
    yield GaugeMetricFamily(
        "sora_webhook_endpoints_failing",
        "Active webhook endpoints whose last attempt failed (failing since a first failure, not yet disabled).",
        value=endpoints["failing"],
    )
