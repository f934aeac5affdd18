"""`make demo` on embedded defaults: SQLite, embedded Redis, a real worker, Daphne."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from django.core.management import call_command

from annotations.demo_data import demo_cases
from annotations.management.commands.seed_demo import DEMO_USERS, demo_password
from annotations.models import Domain, Item

ROOT = Path(__file__).resolve().parents[1]


def watch_generation(port: int, item_id: int, session_key: str, token: str) -> list[dict]:
    """Open the item's live channel as a browser would, ask for a draft, return every message until it is done."""
    from websockets.sync.client import connect

    messages = []
    with connect(
        f"ws://127.0.0.1:{port}/ws/items/{item_id}/",
        origin=f"http://127.0.0.1:{port}",
        additional_headers={"Cookie": f"sessionid={session_key}"},
        open_timeout=10,
    ) as socket_:
        messages.append(json.loads(socket_.recv(timeout=10)))
        status, _ = http_json(f"http://127.0.0.1:{port}/api/v1/items/{item_id}/generate/", {}, token=token)
        assert status == 202
        while messages[-1]["type"] not in ("done", "error"):
            messages.append(json.loads(socket_.recv(timeout=120)))
    return messages


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


SESSION_FOR = """
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
user = get_user_model().objects.get(username="{username}")
session = SessionStore()
session[SESSION_KEY], session[HASH_SESSION_KEY] = str(user.pk), user.get_session_auth_hash()
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session.create()
print(session.session_key)
"""
SHORT_DRAFTS = (
    "from annotations.models import Domain; "
    "Domain.objects.filter(slug='customer_service').update(sampling={'max_new_tokens': 40})"
)


@dataclass
class Stack:
    base: str
    port: int
    env: dict
    server: subprocess.Popen
    session_key: str  # a signed-in session of the demo reviewer


@contextmanager
def running_stack(data_dir, tiny_model_dir):
    """`sora_serve` on a fresh data directory: embedded Redis, both Celery workers, Daphne; the tiny model active."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DJANGO_SETTINGS_MODULE="sora_web.settings.local", SORA_DATA_DIR=str(data_dir), DJANGO_DEBUG="0")
    env.update(SORA_GENERAL_ANSWER_TOKENS="16")  # as in the test settings: the tiny model never ends an answer
    manage = [sys.executable, "manage.py"]

    def run(*args: str) -> str:
        return subprocess.run([*manage, *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout

    run("migrate", "--noinput")
    run("collectstatic", "--noinput")  # as `make demo` does: pages use the hashed static files
    run("seed_demo")
    # the tiny model stands in for SmolLM2 (tests/models_app/test_prepare_model.py converts the real one)
    run("prepare_model", "--path", str(tiny_model_dir), "--name", "tiny-llama", "--activate-everywhere")
    run("shell", "-c", SHORT_DRAFTS)
    session_key = run("shell", "--no-imports", "-c", SESSION_FOR.format(username="reviewer")).strip()
    port = free_port()
    server_log = data_dir / "sora_serve.log"
    server = subprocess.Popen(
        [*manage, "sora_serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=server_log.open("w"),
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
        yield Stack(base=base, port=port, env=env, server=server, session_key=session_key)
    except BaseException:
        print(server_log.read_text()[-20_000:])  # what the web server and workers said, for the failure report
        raise
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.slow
def test_sora_serve_runs_web_worker_and_embedded_redis_without_any_server(tmp_path, tiny_model_dir):
    with running_stack(tmp_path, tiny_model_dir) as stack:
        base, env, server, session_key, port = stack.base, stack.env, stack.server, stack.session_key, stack.port
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

        # a draft streams from the inference worker, through Redis and Daphne, into a browser's WebSocket
        _, ready = http_json(f"{base}/api/v1/items/?domain=customer_service&status=ready", token=token["token"])
        item_id = ready["results"][0]["id"]
        messages = watch_generation(port, item_id, session_key, token["token"])
        snapshot, chunks, done = messages[0], [m for m in messages if m["type"] == "tokens"], messages[-1]
        assert snapshot["type"] == "snapshot" and snapshot["viewers"] == [{"username": "reviewer"}]
        assert done["type"] == "done", messages
        assert [chunk["seq"] for chunk in chunks] == list(range(1, len(chunks) + 1))
        assert len(chunks) >= 2
        assert "".join(chunk["text"] for chunk in chunks) == done["text"]
        assert done["model_version"] == "tiny-llama"
        _, detail = http_json(f"{base}/api/v1/items/{item_id}/", token=token["token"])
        assert (detail["status"], detail["draft"]) == ("ready", done["text"])
        statuses = [m["status"] for m in messages if m["type"] == "item"]
        assert statuses[:2] == ["queued", "generating"] and statuses[-1] == "ready"

        # a supervisor's SIGTERM to sora_serve alone stops its children too
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        with pytest.raises(redis.ConnectionError):
            redis.Redis(unix_socket_path=str(tmp_path / "redis.sock"), socket_timeout=1).ping()
