import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sora_web.settings.local")

app = Celery("sora")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
