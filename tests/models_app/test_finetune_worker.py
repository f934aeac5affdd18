"""A real training worker killed mid-run (SIGKILL): after a new worker takes over there is exactly one
finished run and at most one promoted version (PRODUCT.md §8, reliability).

Real parts: a `celery worker -Q training --pool solo` process on the test database, the Redis broker of
REDIS_URL, the tiny model. The test process plays beat: it runs the sweep that sends a silent job again.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from annotations import services
from annotations.models import AuditEvent
from models_app import finetuning
from models_app.models import FineTuneJob, ModelVersion
from tests.factories import ItemFactory

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
# Long enough to kill mid-run: about 10 steps a second with the tiny model.
STALE_SECONDS = 3
SLOW_RUN = {"epochs": 40, "learning_rate": 0.01, "batch_size": 4, "lora_rank": 8, "checkpoint_every": 5}


def database_url() -> str:
    """The test database, for the worker process."""
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


def start_worker(data_dir: Path, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "sora_web.settings.test",
        "DATABASE_URL": database_url(),
        "SORA_DATA_DIR": str(data_dir),
        "SORA_FINETUNE_STALE_SECONDS": str(STALE_SECONDS),  # the same limit as the sweep in this process
    }
    command = [sys.executable, "-m", "celery", "-A", "sora_web", "worker", "-Q", "training", "--pool", "solo"]
    command += ["--loglevel", "INFO", "--hostname", f"training-test-{time.monotonic_ns()}@%h"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_worker_killed_mid_run_leaves_one_finished_run(domain, reviewer, tiny_model, settings, tmp_path, request):
    from sora_web.celery import app

    eager = app.conf.task_always_eager
    app.conf.task_always_eager = False  # a real broker and a real worker this time
    request.addfinalizer(lambda: setattr(app.conf, "task_always_eager", eager))
    settings.SORA_HELDOUT_PERCENT = 30
    domain.sampling = {"max_new_tokens": 12}
    domain.save()
    for n in range(30):
        ItemFactory(domain=domain, input=f"Customer message {n}: where is my parcel?", draft=f"Draft {n}.")
        claimed = services.item_claim_next(reviewer=reviewer)
        services.review_submit(
            item_id=claimed.pk,
            reviewer=reviewer,
            decision="approve",
            version=claimed.version,
            final_text="Best regards, The Brightwater Support Team.",
        )
    log = tmp_path / "workers.log"
    first = start_worker(tmp_path, log)
    second = None
    try:
        job = finetuning.finetune_job_start(domain=domain, hyperparameters=SLOW_RUN)

        def past_a_checkpoint():
            job.refresh_from_db()
            return job.step >= 12

        wait_for(past_a_checkpoint, 120, "the first worker to pass step 12")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = job.step

        second = start_worker(tmp_path, log)
        settings.SORA_FINETUNE_STALE_SECONDS = STALE_SECONDS
        time.sleep(STALE_SECONDS + 0.5)
        assert finetuning.finetune_jobs_sweep()["resent"] == [job.pk]

        def finished():
            job.refresh_from_db()
            return job.status not in FineTuneJob.UNFINISHED

        wait_for(finished, 180, "the run to finish in the second worker")
    except BaseException:
        print(log.read_text()[-10_000:])
        raise
    finally:
        for worker in (first, second):
            if worker is not None and worker.poll() is None:
                worker.kill()

    assert (job.status, job.attempts) == ("succeeded", 2), job.error
    assert killed_at < job.total_steps
    assert [step for step, _ in job.loss_history] == list(range(1, job.total_steps + 1))
    assert FineTuneJob.objects.filter(domain=domain).count() == 1
    assert ModelVersion.objects.filter(trained_by__domain=domain).count() == 1
    assert ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE, trained_by__domain=domain).count() <= 1
    assert AuditEvent.objects.filter(verb="finetune.succeeded", target_id=str(job.pk)).count() == 1
