"""`make demo` on embedded defaults: SQLite, embedded Redis, a real worker, Daphne."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from django.core.management import call_command

from annotations.demo_data import demo_cases
from annotations.management.commands.seed_demo import DEMO_USERS, demo_password
from annotations.models import Domain, Item

ROOT = Path(__file__).resolve().parents[1]


def test_demo_cases_cover_every_domain_with_gold_outputs(db):
    for domain in Domain.objects.values_list("slug", flat=True):
        cases = demo_cases(domain)
        assert len(cases) >= 30, domain
        assert all(case.gold.strip() and case.draft.strip() and case.input.strip() for case in cases)
        assert len({case.external_id for case in cases}) == len(cases)


def test_seed_demo_creates_logins_and_items_once(db, django_user_model):
    call_command("seed_demo", stdout=open(os.devnull, "w"))
    call_command("seed_demo", stdout=open(os.devnull, "w"))

    for username, *_ in DEMO_USERS:
        assert django_user_model.objects.get(username=username).check_password(demo_password(username))
    assert Item.objects.count() == len(demo_cases())
    for domain in Domain.objects.all():
        assert Item.objects.filter(domain=domain, status="ready").count() >= 30
        assert domain.reviewers.filter(username="reviewer").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.mark.slow
def test_sora_serve_runs_web_worker_and_embedded_redis_without_any_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DJANGO_SETTINGS_MODULE="sora_web.settings.local", SORA_DATA_DIR=str(tmp_path), DJANGO_DEBUG="0")
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True)
    subprocess.run([*manage, "seed_demo"], cwd=ROOT, env=env, check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(
        [*manage, "sora_serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline:
            try:
                status, body = http_json(f"{base}/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert status == 200, "web never became ready"
        assert body["checks"] == {"database": "ok", "broker": "ok", "channel_layer": "ok"}

        # the worker answers over the embedded broker
        ping = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "sora_web", "inspect", "ping", "--timeout", "5"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for _ in range(20):
            if "pong" in ping.stdout:
                break
            time.sleep(1)
            ping = subprocess.run(ping.args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert "pong" in ping.stdout, ping.stdout + ping.stderr

        # a demo reviewer claims and approves through the real server
        _, token = http_json(f"{base}/api/v1/auth/token/", {"username": "reviewer", "password": "reviewer-demo"})
        status, item = http_json(f"{base}/api/v1/queue/claim/", {}, token=token["token"])
        assert status == 200
        status, review = http_json(
            f"{base}/api/v1/items/{item['id']}/reviews/",
            {"decision": "approve", "version": item["version"], "final_text": item["draft"] + " Thanks!"},
            token=token["token"],
        )
        assert status == 201, review
        assert review["item"]["status"] in ("approved", "ready")

        # a supervisor's SIGTERM to sora_serve alone stops its children too
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        with pytest.raises(redis.ConnectionError):
            redis.Redis(unix_socket_path=str(tmp_path / "redis.sock"), socket_timeout=1).ping()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
