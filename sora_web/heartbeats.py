"""Celery workers say they are alive (docs/deploy.md, "What to watch").

Every worker process keeps an entry fresh in the broker's Redis: its hostname, the time of its last
heartbeat and the queues it consumes. /prometheus/metrics reads them back (sora_web/monitoring.py), so
an operator sees per queue whether any worker is there to take its tasks.

A thread writes them, every INTERVAL_S. Not Celery's own event heartbeats: `heartbeat_sent` fires only
when events are on (`-E`), and they cross the broker as fanout messages nobody here consumes. Not the
worker's timer either: it runs in the worker's event loop, which a task on the solo pool (training, the
GPU worker) holds for minutes, and a busy worker would look dead. The thread costs one round trip to
Redis per interval and never touches a task; when Redis is away it logs and tries again next time.

Redis layout (no key per worker: the reader needs no SCAN over a keyspace the cache shares):
  HEARTBEATS_KEY  sorted set, hostname -> Redis server time of its last heartbeat
  QUEUES_KEY      hash, hostname -> the queues it consumes, comma-separated
Times come from Redis's clock (TIME), on both sides, so web and worker hosts need not agree on the time.
A worker stopped cleanly removes its entry; one that died stays, its age growing, until FORGET_AFTER_S.
"""

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis
from celery import bootsteps
from kombu import Connection
from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)

HEARTBEATS_KEY = "sora:worker-heartbeats"
QUEUES_KEY = "sora:worker-queues"
INTERVAL_S = 15.0
# A worker counts as alive while its last heartbeat is younger than this: three missed beats and some slack.
FRESH_S = 60.0
FORGET_AFTER_S = 24 * 3600.0
IO_TIMEOUT_S = 5.0
# Ask once, briefly: a scrape or a heartbeat must not wait out kombu's default of retrying for ever.
BROKER_PROBE_OPTIONS = {"socket_timeout": IO_TIMEOUT_S, "socket_connect_timeout": IO_TIMEOUT_S, "max_retries": 1}
# What talking to the broker can raise: kombu wraps connection failures in OperationalError; redis-py raises
# its own errors (timeouts, a restarted server) once connected; the socket layer raises OSError.
BROKER_ERRORS = (OperationalError, redis.RedisError, OSError)


@dataclass(frozen=True)
class Heartbeat:
    worker: str
    queues: tuple[str, ...]
    age_s: float

    @property
    def fresh(self) -> bool:
        return self.age_s <= FRESH_S


def broker_connection(app, url: str | None = None) -> Connection:
    """A connection to the app's broker (or `url`) with kombu's own URL handling and transport options
    (redis://, rediss://, the embedded Redis's redis+socket://, priority steps, key prefix) and short timeouts."""
    return app.connection_for_read(url, connect_timeout=IO_TIMEOUT_S, transport_options=BROKER_PROBE_OPTIONS)


def broker_redis(conn: Connection) -> redis.Redis | None:
    """The Redis client behind a kombu connection, or None when the broker is not Redis (memory:// in tests)."""
    conn.ensure_connection(max_retries=1, timeout=IO_TIMEOUT_S)
    if conn.transport.driver_type != "redis":
        return None
    return conn.default_channel.client


def _redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1_000_000


def heartbeat_write(client: redis.Redis, *, hostname: str, queues: Iterable[str]) -> None:
    """Record that `hostname` is alive now and consumes `queues`; forget workers silent for FORGET_AFTER_S."""
    now = _redis_now(client)
    with client.pipeline(transaction=True) as pipe:
        pipe.zadd(HEARTBEATS_KEY, {hostname: now})
        pipe.hset(QUEUES_KEY, hostname, ",".join(sorted(queues)))
        # Both keys go away a day after the last worker stopped beating.
        pipe.expire(HEARTBEATS_KEY, int(FORGET_AFTER_S))
        pipe.expire(QUEUES_KEY, int(FORGET_AFTER_S))
        pipe.execute()
    if forgotten := client.zrangebyscore(HEARTBEATS_KEY, "-inf", now - FORGET_AFTER_S):
        with client.pipeline(transaction=True) as pipe:
            pipe.zrem(HEARTBEATS_KEY, *forgotten)
            pipe.hdel(QUEUES_KEY, *forgotten)
            pipe.execute()


def heartbeat_remove(client: redis.Redis, *, hostname: str) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.zrem(HEARTBEATS_KEY, hostname)
        pipe.hdel(QUEUES_KEY, hostname)
        pipe.execute()


def heartbeats_read(client: redis.Redis) -> list[Heartbeat]:
    """Every worker heard from within FORGET_AFTER_S, oldest heartbeat first."""
    with client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zrange(HEARTBEATS_KEY, 0, -1, withscores=True)
        pipe.hgetall(QUEUES_KEY)
        (seconds, micros), beats, queues = pipe.execute()
    now = seconds + micros / 1_000_000
    queues = {_text(name): _text(value) for name, value in queues.items()}
    heartbeats = []
    for name, at in beats:
        worker = _text(name)
        age = max(0.0, now - at)
        if age <= FORGET_AFTER_S:
            consumed = tuple(q for q in queues.get(worker, "").split(",") if q)
            heartbeats.append(Heartbeat(worker=worker, queues=consumed, age_s=age))
    return heartbeats


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class HeartbeatSender:
    """Writes this worker's heartbeat from a daemon thread until stopped, then removes it."""

    def __init__(
        self,
        *,
        connect: Callable[[], Connection],
        hostname: str,
        queues: Callable[[], Iterable[str]],
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.connect, self.hostname, self.queues, self.interval_s = connect, hostname, queues, interval_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sora-worker-heartbeat", daemon=True)
        self._conn: Connection | None = None
        self._failing = False

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=IO_TIMEOUT_S * 2)
        try:
            if (client := self._client()) is not None:
                heartbeat_remove(client, hostname=self.hostname)
        except BROKER_ERRORS as exc:
            # Harmless: the entry ages and the metrics show this worker as not fresh.
            logger.warning("worker heartbeat: could not remove %s: %s", self.hostname, exc)
        finally:
            self._disconnect()

    def beat(self) -> bool:
        """One heartbeat; False when Redis could not be reached (logged once per outage)."""
        try:
            client = self._client()
            if client is None:
                return False
            heartbeat_write(client, hostname=self.hostname, queues=list(self.queues()))
        except BROKER_ERRORS as exc:
            if not self._failing:
                logger.warning("worker heartbeat: cannot reach the broker's Redis, will keep trying: %s", exc)
            self._failing = True
            self._disconnect()  # a fresh connection next time
            return False
        if self._failing:
            logger.info("worker heartbeat: the broker's Redis answers again")
            self._failing = False
        return True

    def _run(self) -> None:
        self.beat()
        while not self.stopped.wait(self.interval_s):
            self.beat()

    def _client(self) -> redis.Redis | None:
        if self._conn is None:
            self._conn = self.connect()
        client = broker_redis(self._conn)
        if client is None and not self.stopped.is_set():
            logger.info("worker heartbeat: the broker is not Redis (%s); no heartbeats", self._conn.transport_cls)
            self.stopped.set()
        return client

    def _disconnect(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.release()
            except BROKER_ERRORS as exc:
                logger.debug("worker heartbeat: closing a broken connection: %s", exc)


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Worker bootstep: a HeartbeatSender for the worker's lifetime. After the pool, so the prefork pool forks
    its children before the thread exists; a worker step starts before the consumer (which Celery puts last)."""

    requires = ("celery.worker.components:Pool",)

    def create(self, w):
        app = w.app
        # Read at every beat: `celery control add_consumer` / `cancel_consumer` change them while it runs.
        return HeartbeatSender(
            connect=lambda: broker_connection(app),
            hostname=w.hostname,
            queues=lambda: list(app.amqp.queues.consume_from),
        )
