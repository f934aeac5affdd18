"""The production set-up, checked without a Docker engine (none runs on these machines): docker-compose.yml's
structure (services, queues, health checks, volumes, the GPU reservation), the images it builds, the variables
it needs, and `manage.py check --deploy` under the production settings."""

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def command_of(service: dict) -> list[str]:
    return service["command"] if isinstance(service["command"], list) else service["command"].split()


def queues_of(service: dict) -> set[str]:
    command = command_of(service)
    return set(command[command.index("-Q") + 1].split(","))


def test_every_part_of_the_stack_is_a_service(compose):
    assert {"postgres", "redis", "migrate", "web", "worker", "gpu-worker", "beat"} <= set(compose["services"])


def test_every_celery_queue_has_a_consumer_and_the_gpu_worker_takes_gpu_work_one_task_at_a_time(compose, settings):
    services = compose["services"]
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()} | {settings.CELERY_TASK_DEFAULT_QUEUE}
    workers = [s for s in services.values() if s.get("command") and "worker" in command_of(s)]
    consumed = set().union(*(queues_of(worker) for worker in workers))
    assert routed <= consumed, routed - consumed
    assert queues_of(services["worker"]) == {"default", "webhooks"}

    gpu = services["gpu-worker"]
    assert queues_of(gpu) == {"inference", "training"} and "solo" in command_of(gpu)  # no fork after CUDA
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["dockerfile"] == "Dockerfile.gpu" and (ROOT / "Dockerfile.gpu").is_file()
    assert gpu["profiles"] == ["gpu"]  # CPU hosts run the inference and training services instead
    assert "beat" in command_of(services["beat"])


def test_web_is_reachable_only_through_the_proxy_on_the_host(compose):
    web = compose["services"]["web"]
    assert "command" not in web or "--proxy-headers" not in command_of(web)  # it trusts the leftmost entry
    assert all(str(port).startswith("127.0.0.1:") for port in web["ports"])


def test_health_checks_order_the_start_and_data_lives_in_volumes(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "web"):
        assert services[name]["healthcheck"]["test"], name
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    for name, service in services.items():
        if name in ("postgres", "redis", "migrate"):
            continue
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no" and "migrate" in " ".join(command_of(services["migrate"]))

    named = set(compose["volumes"])
    assert {"postgres-data", "sora-data"} <= named
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    for name in ("web", "worker", "gpu-worker", "beat", "migrate"):
        assert "sora-data:/data" in services[name]["volumes"], name  # models, adapters, the beat schedule
        assert services[name]["environment"]["DJANGO_SETTINGS_MODULE"] == "sora_web.settings.production"


def test_the_variables_the_stack_needs_are_in_the_example_env_file(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    interpolated = set(re.findall(r"\$\{([A-Z_]+)", text))
    example = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    required_by_production = {"DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS"}
    assert interpolated | required_by_production <= example


def production_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SORA_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="sora_web.settings.production",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="sora.example.org",
        REDIS_URL="redis://127.0.0.1:6379/0",
        DATABASE_URL="postgres://sora@127.0.0.1:5432/sora",
        SORA_DATA_DIR=str(ROOT / "var" / "deploy-check"),
        **extra,
    )
    return env


def test_check_deploy_is_clean_under_the_production_settings():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("missing", ["DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "REDIS_URL"])
def test_production_refuses_to_start_without_its_secrets_and_services(missing):
    env = production_env()
    env.pop(missing)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and missing in result.stderr
