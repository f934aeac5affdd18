"""Test runs. Uses PostgreSQL/Redis when DATABASE_URL/REDIS_URL are set
(CI requires them), SQLite and in-process stand-ins otherwise."""

from .base import *  # noqa: F403
from .base import CHANNEL_LAYERS, DATA_DIR, DATABASES, REDIS_URL, env

# Lets two test runs on one machine keep apart (e.g. SORA_TEST_DB_SUFFIX=bench).
_suffix = env("SORA_TEST_DB_SUFFIX", default="")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not ":memory:": the SQLite concurrency tests need several
    # connections to see the same database.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-sora{_suffix}.sqlite3")}
elif _suffix:
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}{_suffix}"}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if not REDIS_URL:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://"
else:
    # Pub/sub channels are shared by every database of the server: two test runs keep apart by prefix.
    CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"sora-test{_suffix}"

# Tasks run inline here: an approval must not start a training run unless a test asks for one.
SORA_FINETUNE_AUTO = False

# Unit tests run tasks inline; the worker tests start a real worker process.
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True

# The tests' webhook receivers listen on loopback; the SSRF tests turn this off again.
SORA_WEBHOOK_ALLOW_PRIVATE = True
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

# Rate limits stay on (the code path runs everywhere) but out of reach; tests/sora_web/test_throttling.py lowers them.
SORA_API_RATES = {"user": "100000/min", "anon": "100000/min"}

# The tiny test model never ends an answer: 56 general answers of 200 tokens took a job's worker about 100 s to
# write, per replay directory, before its first step.
SORA_GENERAL_ANSWER_TOKENS = 16

LOGGING = {"version": 1, "disable_existing_loggers": False}

# No collectstatic before tests.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405 (WhiteNoise warns when it is missing)
