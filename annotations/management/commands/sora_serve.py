"""Run the whole product on one machine: embedded Redis (when REDIS_URL is unset),
a Celery worker with its beat scheduler, an inference worker, a training worker, and Daphne.
Ctrl-C stops them all."""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from sora_web import embedded_redis


class Command(BaseCommand):
    help = "Start web (Daphne) and worker (Celery) for a demo or a single-machine install."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
        parser.add_argument("--no-worker", action="store_true", help="Start the web server only.")

    def handle(self, *args, host: str, port: int, no_worker: bool, **options):
        # A supervisor's SIGTERM stops the children too, like Ctrl-C.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        children: list[subprocess.Popen] = []
        try:
            if settings.USES_EMBEDDED_REDIS:
                children.append(embedded_redis.start(settings.EMBEDDED_REDIS_SOCKET))
                self.stdout.write(f"embedded Redis on {settings.EMBEDDED_REDIS_SOCKET}")
            if not no_worker:
                children.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "celery", "-A", "sora_web", "worker", "--beat",
                         "--loglevel", "INFO", "--concurrency", "2", "-Q", "default,webhooks",
                         "--hostname", "default@%h",
                         "--schedule", str(settings.DATA_DIR / "celerybeat-schedule")]
                    )
                )  # fmt: skip
                # Generation in its own worker: one model in memory, and no short task waits behind a long draft.
                children.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "celery", "-A", "sora_web", "worker", "--loglevel", "INFO",
                         "--concurrency", str(settings.SORA_INFERENCE_CONCURRENCY), "-Q", "inference",
                         "--hostname", "inference@%h"]
                    )
                )  # fmt: skip
                # Fine-tuning: one run at a time, in a process of its own (solo pool: no fork after torch loads).
                children.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "celery", "-A", "sora_web", "worker", "--loglevel", "INFO",
                         "--pool", "solo", "-Q", "training", "--hostname", "training@%h"]
                    )
                )  # fmt: skip
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), "sora_web.asgi:application"]
                )
            )
            self.stdout.write(
                self.style.SUCCESS(f"\nSora is running at http://{host}:{port}/admin/  (API: /api/docs/)")
            )
            self.stdout.write("Press Ctrl-C to stop.\n")
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
            self.stderr.write("a process exited; stopping the others")
        except KeyboardInterrupt:
            pass
        finally:
            for child in reversed(children):
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in reversed(children):
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
