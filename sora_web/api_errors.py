"""One JSON error shape for the whole API (PRODUCT.md §5).

{"detail": "<human-readable message>", "code": "<machine code>",
 "errors": {"<field>": ["<message>", ...]}}   # validation errors only

`ApiView` documents it in the OpenAPI schema: every view answers with these errors, so every operation lists them
(clients and the fuzzer, tests/fuzz, read the schema).
"""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import OperationalError
from django.http import Http404, JsonResponse
from django.views import defaults
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView
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


# --- the errors in the OpenAPI schema ----------------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    """The error answer of every API view (above). Conflicts may add what the client needs to recover, e.g. the
    item's current `status` and `version`."""

    detail = serializers.CharField(help_text="What went wrong, for people.")
    code = serializers.CharField(help_text="What went wrong, for programs: invalid, not_found, stale_version …")
    errors = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        help_text="Validation errors only: each field's messages (a list, or for a nested field its own errors).",
    )


def error_response(description: str) -> OpenApiResponse:
    """A documented error answer of one operation (409, 422 …), with the error body."""
    return OpenApiResponse(ErrorSerializer, description=description)


class ApiSchema(AutoSchema):
    """drf-spectacular's schema plus the errors any API view may answer with, where they can happen:

    - 400 where there is a request body or query parameters to get wrong, 415 where a body is read;
    - 401 and 403 everywhere (no or a bad token; a role or domain the user lacks, or a session without CSRF);
    - 404 where the path names a row, and on lists (a page past the end);
    - 429 everywhere (SORA_API_RATES) and 503 everywhere (SQLite's write lock is busy, exception_handler above).

    Errors a view declares itself (409, 422) keep their description and get the error body too."""

    def _error_codes(self) -> dict[int, str]:
        codes = {
            401: "Not signed in, or the token is not valid.",
            403: "The user's role or domains do not allow this.",
            429: "Too many requests; retry after the Retry-After header's seconds.",
            503: "The database is busy; retry shortly.",
        }
        has_body = self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None
        query = [p for p in self._get_parameters() if p.get("in") == "query"]
        if has_body or query:
            codes[400] = "The request is not valid; `errors` names the fields."
        if has_body:
            codes[415] = "The body is not JSON (Content-Type: application/json)."
        if "{" in self.path or (self._get_paginator() is not None and self._is_list_view()):
            codes[404] = "Not found, or not visible to this user."
        return codes

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for code, response in responses.items():
            if int(code) >= 400 and "content" not in response:
                responses[code] = {**response, **self._get_response_for_code(ErrorSerializer, code)}
                responses[code]["description"] = response["description"]
        for code, description in sorted(self._error_codes().items()):
            if str(code) not in responses:
                responses[str(code)] = self._get_response_for_code(error_response(description), str(code))
        return responses


class ApiView(APIView):
    """The base of the API's views: their schema documents the errors they answer with (ApiSchema)."""

    schema = ApiSchema()
