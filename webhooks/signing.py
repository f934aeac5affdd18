"""Standard Webhooks signatures (https://www.standardwebhooks.com): what a receiver verifies with the
`standardwebhooks` library. Secrets are `whsec_` + base64 of 32 random bytes; the signature is
base64(HMAC-SHA256(secret bytes, f"{id}.{timestamp}.{body}")), sent as `v1,<signature>`, one per secret."""

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"


def secret_generate() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(secret: str, message_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secrets_in_use: list[str], message_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The three headers; during a secret rotation every secret in use signs (space-separated)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, message_id, timestamp, body) for s in secrets_in_use),
    }
