"""One JSON error shape for the whole API (PRODUCT.md §5).

{"detail": "<human-readable message>", "code": "<machine code>",
 "errors": {"<field>": ["<message>", ...]}}   # validation errors only
"""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import OperationalError
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from annotations.exceptions import SoraError

logger = logging.getLogger(__name__)


def exception_handler(exc, context):
    if isinstance(exc, OperationalError) and "locked" in str(exc):
        # SQLite gave up waiting for the write lock: a busy server, not a broken request.
        logger.warning("database busy: %s", exc)
        return Response(
            {"detail": "The database is busy; retry shortly.", "code": "busy"},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, SoraError):
        return Response({"detail": exc.message, "code": exc.code, **exc.extra}, status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        fields = ", ".join(str(name) for name in errors)
        response.data = {"detail": f"Invalid input: {fields}.", "code": "invalid", "errors": errors}
    elif isinstance(exc, exceptions.APIException):
        detail = exc.detail
        response.data = {"detail": str(detail), "code": getattr(detail, "code", exc.default_code)}
    return response


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


# Django's error handlers: JSON under /api/, Django's own pages elsewhere (admin, dashboard).


def json_handler400(request, exception=None):
    if not _is_api(request):
        return defaults.bad_request(request, exception)
    return JsonResponse({"detail": "Bad request.", "code": "bad_request"}, status=status.HTTP_400_BAD_REQUEST)


def json_handler403(request, exception=None):
    if not _is_api(request):
        return defaults.permission_denied(request, exception)
    return JsonResponse({"detail": "Permission denied.", "code": "permission_denied"}, status=403)


def json_handler404(request, exception=None):
    if not _is_api(request):
        return defaults.page_not_found(request, exception)
    return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)


def json_handler500(request):
    if not _is_api(request):
        return defaults.server_error(request)
    return JsonResponse({"detail": "Internal server error.", "code": "server_error"}, status=500)
