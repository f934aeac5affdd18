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
