import re

from rest_framework import authentication, exceptions

_TOKEN_KEY = re.compile(r"[0-9a-f]{40}")


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's token auth, refusing malformed keys before they reach the database
    (a NUL byte in the header would otherwise be a PostgreSQL error)."""

    def authenticate_credentials(self, key: str):
        if not _TOKEN_KEY.fullmatch(key):
            raise exceptions.AuthenticationFailed("Invalid token.")
        return super().authenticate_credentials(key)
