import os

from celery import Celery
from celery.signals import task_postrun, task_prerun

from .heartbeats import WorkerHeartbeat

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sora_web.settings.local")

app = Celery("sora")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Every worker records that it is alive, and which queues it consumes, for /prometheus/metrics.
app.steps["worker"].add(WorkerHeartbeat)


@task_prerun.connect
@task_postrun.connect
def _drop_stale_database_connections(task=None, **kwargs) -> None:
    """With CELERY_DB_REUSE_MAX a worker keeps its connection between tasks; drop it when it is broken or past
    CONN_MAX_AGE, as Django does around each request (a database restart does not fail the next tasks).
    Not for a task run inline: it shares its caller's connection, maybe inside a transaction."""
    if task is not None and getattr(task.request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()
