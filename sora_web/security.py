"""Content-Security-Policy for every HTML page: scripts only from our own static files, never inline.

Model output is untrusted text: templates escape it, and this header makes sure
that even a rendering mistake could not run a script.
"""

from django.conf import settings


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.get("Content-Type", "").startswith("text/html"):
            response.setdefault("Content-Security-Policy", settings.SORA_CONTENT_SECURITY_POLICY)
        return response
