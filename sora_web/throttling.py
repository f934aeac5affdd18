"""How often anyone may try: failed sign-ins (against password guessing) and API calls per token.

Counts live in Django's cache, which is Redis in production, so every web node shares them and a restart
does not reset them. The client's address is REMOTE_ADDR, which sora_web/proxies.py sets from the TLS proxy's
X-Forwarded-For; a header a client sends straight to the app is never believed.
"""

import hashlib
import ipaddress
import time

from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends.redis import RedisCache
from rest_framework.throttling import SimpleRateThrottle


def client_address(request) -> str:
    """The address limits are counted for: an IPv6 client is counted per /64 network, since one host is
    usually given a whole /64 and could otherwise take a new address for every try."""
    address = request.META.get("REMOTE_ADDR", "")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address or "unknown"
    if ip.version == 6 and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _count_up(key: str, timeout: int) -> int:
    """Adds one to a counter that lives `timeout` seconds from its first count; returns the new count."""
    if isinstance(cache, RedisCache):
        # One round trip, and never a counter without an expiry: Django's incr() is EXISTS then INCR, and a key
        # expiring between the two would come back from INCR with no expiry, a sign-in lockout for good.
        full_key = cache.make_and_validate_key(key)
        with cache._cache.get_client(full_key, write=True).pipeline() as pipe:
            count, _ = pipe.incr(full_key).expire(full_key, timeout, nx=True).execute()
        return count
    # The in-process cache (development, tests without Redis) is one process: add then incr cannot race away.
    if cache.add(key, 1, timeout=timeout):
        return 1
    try:
        return cache.incr(key)
    except ValueError:  # it expired between the two calls: this is the first count of a new window
        cache.add(key, 1, timeout=timeout)
        return 1


# --- Sign-in ------------------------------------------------------------------------------------------------


def _login_counters(username: str, address: str) -> list[tuple[str, int]]:
    """(cache key, limit) for each way failures are counted (sora_web/settings/base.py explains the three)."""
    # Hashed: a name tried can be any text, and a cache key must stay short and plain.
    name = hashlib.sha256(username.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return [
        (f"login-failures:name-address:{name}:{address}", settings.SORA_LOGIN_FAILURES_PER_NAME_AND_ADDRESS),
        (f"login-failures:address:{address}", settings.SORA_LOGIN_FAILURES_PER_ADDRESS),
        (f"login-failures:name:{name}", settings.SORA_LOGIN_FAILURES_PER_NAME),
    ]


def login_wait_seconds(username: str, request) -> int:
    """0 when this name may try to sign in from this request's address, else how many seconds until it may.
    Refusals are audited (auth.login_throttled), so admins see an attack in the audit log."""
    address = client_address(request)
    counters = _login_counters(username, address)
    counts = cache.get_many([key for key, _ in counters] + [f"{key}:since" for key, _ in counters])
    now = time.time()
    wait = 0
    for key, limit in counters:
        if counts.get(key, 0) >= limit:
            since = counts.get(f"{key}:since", now)
            wait = max(wait, int(since + settings.SORA_LOGIN_WINDOW_SECONDS - now) + 1)
    # Audited once per name and address and window: refusals cost an attacker no password hash, so one row each
    # would let anyone fill the audit log.
    if wait and cache.add(f"{counters[0][0]}:audited", 1, timeout=wait):
        # Imported here: DRF imports this module (DEFAULT_THROTTLE_CLASSES) before the apps' models are ready.
        from annotations.services.audit import auth_event_record

        auth_event_record(verb="auth.login_throttled", user=None, username=username, request=request)
    return wait


def login_failure_record(username: str, request) -> None:
    window = settings.SORA_LOGIN_WINDOW_SECONDS
    for key, _ in _login_counters(username, client_address(request)):
        cache.add(f"{key}:since", time.time(), timeout=window)
        _count_up(key, window)


def login_success_record(username: str, request) -> None:
    """A right password clears this name's failures from this address only: signing in to one account must
    not reset what an address or a name has failed elsewhere."""
    key, _ = _login_counters(username, client_address(request))[0]
    cache.delete_many([key, f"{key}:since"])


def wait_message(seconds: int) -> str:
    minutes = max(1, round(seconds / 60))
    return f"Too many failed sign-ins. Try again in {minutes} minute{'s' if minutes != 1 else ''}."


# --- API ----------------------------------------------------------------------------------------------------


class _FixedWindowThrottle(SimpleRateThrottle):
    """DRF's rate throttle, counting in fixed windows: one cache counter per client and window instead of DRF's
    list of every request's time, which costs a read and a write of up to N timestamps per request.
    Rates come from settings.SORA_API_RATES at each request (None: no limit)."""

    def get_rate(self):
        return settings.SORA_API_RATES.get(self.scope)

    def get_ident(self, request):
        return client_address(request)

    def allow_request(self, request, view):
        if self.rate is None:
            return True
        ident = self.get_cache_key(request, view)
        if ident is None:
            return True
        now = time.time()
        window_start = int(now // self.duration) * self.duration
        count = _count_up(f"{ident}:{window_start}", timeout=self.duration)
        self._wait = window_start + self.duration - now
        return count <= self.num_requests

    def wait(self):
        return self._wait


class UserRateThrottle(_FixedWindowThrottle):
    """Per signed-in user, whether by token or session."""

    scope = "user"

    def get_cache_key(self, request, view):
        if not request.user or not request.user.is_authenticated:
            return None
        return f"api-rate:user:{request.user.pk}"


class AnonRateThrottle(_FixedWindowThrottle):
    """Per address, for calls without credentials (the token endpoint, the schema)."""

    scope = "anon"

    def get_cache_key(self, request, view):
        if request.user and request.user.is_authenticated:
            return None
        return f"api-rate:anon:{self.get_ident(request)}"
