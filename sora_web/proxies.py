"""The client's address behind the TLS proxy: REMOTE_ADDR becomes the address the proxy saw, read from the
right of X-Forwarded-For, past the proxies named in SORA_TRUSTED_PROXIES.

From the right, because proxies (nginx's $proxy_add_x_forwarded_for, most load balancers) append to whatever
the client sent: the leftmost entry is the client's own claim (which Daphne's --proxy-headers would believe).
Sign-in throttling, the API limits and the audit log all read REMOTE_ADDR, so nobody can choose it.
"""

import ipaddress
from functools import lru_cache

from django.conf import settings


@lru_cache(maxsize=8)
def _networks(trusted: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in trusted)


def _is_trusted(address: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address_from(remote_addr: str, forwarded_for: str, trusted: tuple[str, ...]) -> str:
    networks = _networks(trusted)
    if not forwarded_for or not _is_trusted(remote_addr, networks):
        return remote_addr  # a direct client: what it says about itself is not evidence
    address = remote_addr
    for entry in reversed([part.strip() for part in forwarded_for.split(",")]):
        try:
            ipaddress.ip_address(entry)
        except ValueError:
            break  # not an address a proxy would write: stop at the last hop we can vouch for
        address = entry
        if not _is_trusted(entry, networks):
            break
    return address


class ForwardedForMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if settings.SORA_TRUSTED_PROXIES:
            request.META["REMOTE_ADDR"] = client_address_from(
                request.META.get("REMOTE_ADDR", ""),
                request.META.get("HTTP_X_FORWARDED_FOR", ""),
                tuple(settings.SORA_TRUSTED_PROXIES),
            )
        return self.get_response(request)
