import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_check(settings_module: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL"))}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": settings_module, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "env, missing",
    [
        ({"DJANGO_ALLOWED_HOSTS": "sora.example.org", "REDIS_URL": "redis://r:6379/0"}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "x" * 50, "REDIS_URL": "redis://r:6379/0"}, "DJANGO_ALLOWED_HOSTS"),
        ({"DJANGO_SECRET_KEY": "x" * 50, "DJANGO_ALLOWED_HOSTS": "sora.example.org"}, "REDIS_URL"),
    ],
)
def test_production_refuses_to_start_without_secret_key_hosts_or_redis(env, missing, tmp_path):
    result = run_check("sora_web.settings.production", SORA_DATA_DIR=str(tmp_path), **env)

    assert result.returncode != 0
    assert missing in result.stderr


def test_production_starts_with_both(tmp_path):
    result = run_check(
        "sora_web.settings.production",
        SORA_DATA_DIR=str(tmp_path),
        DJANGO_SECRET_KEY="k" * 60,
        DJANGO_ALLOWED_HOSTS="sora.example.org",
        REDIS_URL="redis://cache.example.org:6379/0",
    )

    assert result.returncode == 0, result.stderr


def test_database_url_switches_to_postgres_and_default_is_sqlite_in_wal_mode(tmp_path):
    code = (
        "from django.conf import settings as s; d = s.DATABASES['default'];"
        "print(d['ENGINE'], d.get('OPTIONS', {}).get('transaction_mode'), s.CELERY_BROKER_URL)"
    )

    def settings_line(**env):
        clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        return (
            subprocess.run(
                [sys.executable, "manage.py", "shell", "-c", code],
                cwd=ROOT,
                env={
                    **clean,
                    "DJANGO_SETTINGS_MODULE": "sora_web.settings.local",
                    "SORA_DATA_DIR": str(tmp_path),
                    **env,
                },
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )

    assert settings_line() == f"django.db.backends.sqlite3 IMMEDIATE redis+socket://{tmp_path}/redis.sock"
    assert settings_line(DATABASE_URL="postgres://u@db.example.org/sora", REDIS_URL="redis://cache:6379/0") == (
        "django.db.backends.postgresql None redis://cache:6379/0"
    )


LEAK_PROBE = """
import asyncio, sys
import psycopg
import sora_web.asgi

async def request(app):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/api/v1/items/", "raw_path": b"/api/v1/items/", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"authorization", b"Token " + b"0" * 40)],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    sent, bodies = [], [{"type": "http.request", "body": b"", "more_body": False}]
    async def receive():  # the request once, then no disconnect until Django stops listening
        return bodies.pop() if bodies else await asyncio.Event().wait()
    async def send(message):
        sent.append(message)
    await app(scope, receive, send)
    return sent[0]["status"]

async def main(url, name):
    statuses = await asyncio.gather(*(request(sora_web.asgi.application) for _ in range(30)))
    assert set(statuses) == {401}, statuses
    # Counted while the server still runs, from a connection of its own (another application name).
    with psycopg.connect(url.split("?")[0]) as probe:
        return probe.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name]).fetchone()[0]

print(asyncio.run(main(sys.argv[1], sys.argv[2])))
"""


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_web_server_reuses_database_connections_instead_of_leaking_one_per_request(settings):
    """30 requests through sora_web.asgi: with the pool, a handful of connections; without it (the control),
    one left open per request, which is how PostgreSQL ran out of connections under bench/load.py."""
    db = settings.DATABASES["default"]

    def open_connections(label: str, **env) -> int:
        name = f"sora-leak-probe-{os.getpid()}-{label}"
        url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}?application_name={name}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "SORA_DATABASE"))}
        result = subprocess.run(
            [sys.executable, "-c", LEAK_PROBE, url.replace("postgres://", "postgresql://"), name],
            cwd=ROOT,
            env={**clean, "DJANGO_SETTINGS_MODULE": "sora_web.settings.local", "DATABASE_URL": url, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return int(result.stdout.split()[-1])

    assert 0 < open_connections("pool") <= 10  # SORA_DATABASE_POOL_MAX's default
    assert open_connections("control", SORA_DATABASE_POOL="0") >= 20  # the leak this guards against
