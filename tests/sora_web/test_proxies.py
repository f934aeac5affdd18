"""The client's address behind the TLS proxy (sora_web/proxies.py)."""

import pytest
from django.urls import reverse

from annotations.models import AuditEvent
from sora_web.proxies import client_address_from

TRUSTED = ("127.0.0.0/8", "172.16.0.0/12")


@pytest.mark.parametrize(
    "remote, forwarded, expected",
    [
        # nginx's $proxy_add_x_forwarded_for appends the client it saw to what the client sent.
        ("172.18.0.1", "6.6.6.6, 203.0.113.7", "203.0.113.7"),
        ("172.18.0.1", "203.0.113.7", "203.0.113.7"),
        # Two proxies of ours (a load balancer, then nginx): the first address neither of them is.
        ("127.0.0.1", "6.6.6.6, 203.0.113.7, 172.18.0.5", "203.0.113.7"),
        # A client that reached the app directly: its header says nothing.
        ("203.0.113.9", "127.0.0.1", "203.0.113.9"),
        # Not an address: stop at the last hop a trusted proxy vouched for.
        ("172.18.0.1", "203.0.113.7, junk", "172.18.0.1"),
        ("172.18.0.1", "", "172.18.0.1"),
        ("172.18.0.1", "2001:db8::1", "2001:db8::1"),
    ],
)
def test_the_client_is_the_rightmost_address_past_our_own_proxies(remote, forwarded, expected):
    assert client_address_from(remote, forwarded, TRUSTED) == expected


@pytest.mark.django_db
def test_a_failed_sign_in_is_audited_with_the_address_the_proxy_saw(client, settings):
    settings.SORA_TRUSTED_PROXIES = list(TRUSTED)

    client.post(
        reverse("login"),
        {"username": "rita", "password": "wrong"},
        REMOTE_ADDR="172.18.0.1",
        HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7",
    )

    assert AuditEvent.objects.get(verb="auth.login_failed").after["address"] == "203.0.113.7"


@pytest.mark.django_db
def test_without_trusted_proxies_the_header_is_ignored(client, settings):
    settings.SORA_TRUSTED_PROXIES = []

    client.post(
        reverse("login"),
        {"username": "rita", "password": "wrong"},
        REMOTE_ADDR="10.1.1.1",
        HTTP_X_FORWARDED_FOR="6.6.6.6",
    )

    assert AuditEvent.objects.get(verb="auth.login_failed").after["address"] == "10.1.1.1"
