"""Content-Security-Policy for every HTML page: scripts only from our own static files, never inline.

Model output is untrusted text: templates escape it, and this header makes sure
that even a rendering mistake could not run a script.

Also: the audit log learns who is acting for changes it records from model signals.
"""

from django.conf import settings

from annotations.services.audit import request_acting


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.get("Content-Type", "").startswith("text/html"):
            response.setdefault("Content-Security-Policy", settings.SORA_CONTENT_SECURITY_POLICY)
        return response


class AuditActorMiddleware:
    """Names the request being served, so a role or domain changed in the admin is audited with its author."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with request_acting(request):
            return self.get_response(request)
