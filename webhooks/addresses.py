"""Where a webhook may go: refuse hosts that resolve to loopback, private, link-local, multicast or other
non-public addresses (SSRF), unless SORA_WEBHOOK_ALLOW_PRIVATE. Checked when an endpoint is saved and again
at every delivery, which then connects to the address it checked (a DNS answer cannot change in between)."""

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator


class AddressRefused(Exception):
    """The URL may not be called; the message says why."""


def url_check(url: str) -> None:
    """The URL's form: http(s), a host, https where required. Raises AddressRefused."""
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[::1": an unclosed IPv6 bracket
        raise AddressRefused("This is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddressRefused("The URL must be http:// or https:// with a host.")
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise AddressRefused("This is not a valid URL.") from None
    if parts.scheme != "https" and settings.SORA_WEBHOOK_REQUIRE_HTTPS:
        raise AddressRefused("The URL must use https:// (SORA_WEBHOOK_REQUIRE_HTTPS).")
    if parts.username or parts.password:
        raise AddressRefused("Credentials in the URL are not allowed; the signature authenticates the sender.")


def resolve_allowed(url: str) -> str:
    """The address to connect to: the first the host resolves to, when every address it resolves to is
    allowed. Raises AddressRefused."""
    url_check(url)
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise AddressRefused("The URL's port is not a number from 0 to 65535.") from None
    try:
        answers = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressRefused(f"The host {parts.hostname!r} does not resolve ({exc}).") from None
    addresses = list(dict.fromkeys(answer[4][0] for answer in answers))
    if not settings.SORA_WEBHOOK_ALLOW_PRIVATE:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            if not ip.is_global or ip.is_multicast:
                raise AddressRefused(
                    f"The host {parts.hostname!r} resolves to {address}, a loopback, private, link-local, "
                    "multicast or reserved address (SORA_WEBHOOK_ALLOW_PRIVATE allows it)."
                )
    return addresses[0]
