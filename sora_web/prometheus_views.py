"""GET /prometheus/metrics: the Prometheus text format of sora_web/monitoring.py, for a scraper that sends
`Authorization: Bearer <SORA_METRICS_TOKEN>` or a signed-in staff user. Anyone else: 401 (403 for a
signed-in user who is not staff), plain text, never the figures."""

import secrets

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST

from . import monitoring

TEXT = "text/plain; charset=utf-8"


def _bearer_token(request: HttpRequest) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def _token_matches(given: str) -> bool:
    expected = settings.SORA_METRICS_TOKEN
    # Bytes: compare_digest refuses str with non-ASCII characters, and a header may carry any.
    return bool(expected) and secrets.compare_digest(given.encode(), expected.encode())


def _refusal(request: HttpRequest) -> HttpResponse | None:
    given = _bearer_token(request)
    if given is not None and _token_matches(given):
        return None
    if request.user.is_authenticated and request.user.is_staff:
        return None
    if given is None and request.user.is_authenticated:
        return HttpResponse("Staff only.\n", status=403, content_type=TEXT)
    response = HttpResponse(
        "Send Authorization: Bearer <SORA_METRICS_TOKEN>, or sign in as staff.\n", status=401, content_type=TEXT
    )
    response["WWW-Authenticate"] = 'Bearer realm="sora-metrics"'
    return response


@require_safe
@never_cache
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    if refusal := _refusal(request):
        return refusal
    return HttpResponse(monitoring.metrics_text(), content_type=CONTENT_TYPE_LATEST)
