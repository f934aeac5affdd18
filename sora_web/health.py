"""Liveness and readiness (PRODUCT.md §5): /healthz says the process answers,
/readyz that the database, the broker and the channel layer answer too.

Served by a middleware ahead of all others, not by a URL: a health check calls the process directly
(`http://127.0.0.1:8000/readyz` inside the container), with a host that DJANGO_ALLOWED_HOSTS does not name
and over plain http, which the production settings would answer with 400 or a redirect to https."""

import logging

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from kombu import Connection

logger = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 2


def healthz(request):
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_broker() -> None:
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=PROBE_TIMEOUT_S) as conn:
        conn.ensure_connection(max_retries=1, timeout=PROBE_TIMEOUT_S)


def _check_channel_layer() -> None:
    layer = settings.CHANNEL_LAYERS["default"]
    if layer["BACKEND"].startswith("channels_redis."):
        for host in layer["CONFIG"]["hosts"]:
            url = host["address"] if isinstance(host, dict) else host
            redis.Redis.from_url(url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S).ping()


CHECKS = {"database": _check_database, "broker": _check_broker, "channel_layer": _check_channel_layer}


def readyz(request):
    results = {}
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 (any failure means "not ready", reported per dependency)
            logger.warning("readiness check %s failed: %s", name, exc)
            results[name] = f"error: {type(exc).__name__}"
    ready = all(value == "ok" for value in results.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": results}, status=200 if ready else 503)


class HealthCheckMiddleware:
    PATHS = {"/healthz": healthz, "/readyz": readyz}

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        view = self.PATHS.get(request.path_info)
        return view(request) if view is not None else self.get_response(request)
