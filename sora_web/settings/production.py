"""Production: refuses to start without a secret key and allowed hosts."""

from .base import *  # noqa: F403
from .base import env, environ

SECRET_KEY = env("DJANGO_SECRET_KEY")
# Rotating the key: the old one here keeps existing sessions and signed links valid meanwhile (docs/deploy.md).
SECRET_KEY_FALLBACKS = env.list("DJANGO_SECRET_KEY_FALLBACKS", default=[])
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS")
if not ALLOWED_HOSTS:
    raise environ.ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must name at least one host")
if not env("REDIS_URL", default=""):
    # The embedded Redis is for `make demo`; nothing starts it in production.
    raise environ.ImproperlyConfigured("Set the environment variable REDIS_URL")
DEBUG = False

SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
# A year: what the HSTS preload list asks of a site that sends `preload` (SECURE_HSTS_PRELOAD below).
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# The TLS proxy in front of Daphne: on the same host (loopback, the Docker bridge) or the private network.
SORA_TRUSTED_PROXIES = env.list(
    "SORA_TRUSTED_PROXIES", default=["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
)

SORA_WEBHOOK_REQUIRE_HTTPS = env.bool("SORA_WEBHOOK_REQUIRE_HTTPS", default=True)
