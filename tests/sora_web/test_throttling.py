"""Sign-in throttling (the login page, the admin, the token API) and API rate limits per token.

Counts go through Django's cache: Redis when REDIS_URL is set (the CI run), the in-process cache otherwise.
tests/conftest.py gives each test a cache key prefix of its own.
"""

import time

import pytest
from django.core.cache import caches
from django.test import Client
from django.urls import reverse

from annotations.models import AuditEvent
from tests.factories import UserFactory

PASSWORD = "correct horse battery staple"


@pytest.fixture
def limits(settings):
    settings.SORA_LOGIN_FAILURES_PER_NAME_AND_ADDRESS = 3
    settings.SORA_LOGIN_FAILURES_PER_ADDRESS = 6
    settings.SORA_LOGIN_FAILURES_PER_NAME = 8
    settings.SORA_LOGIN_WINDOW_SECONDS = 900
    return settings


@pytest.fixture
def rita(db):
    user = UserFactory(username="rita")
    user.set_password(PASSWORD)
    user.save()
    return user


def page_sign_in(username, password, address="10.0.0.1", **extra):
    response = Client().post(
        reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=address, **extra
    )
    return response


def signed_in(response) -> bool:
    return response.status_code == 302 and "_auth_user_id" in response.client.session


def form_errors(response) -> list[str]:
    return response.context["form"].non_field_errors()


@pytest.mark.django_db
def test_the_right_password_is_refused_after_too_many_wrong_ones_from_one_address(limits, rita):
    for _ in range(3):
        response = page_sign_in("rita", "wrong")
        assert response.status_code == 200 and not signed_in(response)

    response = page_sign_in("rita", PASSWORD)

    assert not signed_in(response)
    assert "Too many failed sign-ins. Try again in 15 minutes." in form_errors(response)
    assert AuditEvent.objects.filter(verb="auth.login_throttled", after__username="rita").count() == 1
    # The same name from another address, and another name from this one, are not held back.
    assert signed_in(page_sign_in("rita", PASSWORD, address="10.0.0.2"))
    sam = UserFactory(username="sam")
    sam.set_password(PASSWORD)
    sam.save()
    assert signed_in(page_sign_in("sam", PASSWORD))


@pytest.mark.django_db
def test_a_successful_sign_in_clears_its_own_failures_only(limits, rita):
    for _ in range(2):
        page_sign_in("rita", "wrong")
    assert signed_in(page_sign_in("rita", PASSWORD))
    for _ in range(2):
        page_sign_in("rita", "wrong")

    assert signed_in(page_sign_in("rita", PASSWORD))


@pytest.mark.django_db
def test_an_address_trying_many_names_is_refused_whatever_the_name(limits, rita):
    for n in range(6):
        page_sign_in(f"someone-{n}", "wrong", address="10.0.0.9")

    refused = page_sign_in("rita", PASSWORD, address="10.0.0.9")

    assert not signed_in(refused)
    assert form_errors(refused) == ["Too many failed sign-ins. Try again in 15 minutes."]
    assert signed_in(page_sign_in("rita", PASSWORD, address="10.0.0.10"))


@pytest.mark.django_db
def test_a_name_guessed_from_many_addresses_is_refused_everywhere(limits, rita):
    for n in range(8):
        page_sign_in("rita", "wrong", address=f"10.0.1.{n}")

    assert not signed_in(page_sign_in("rita", PASSWORD, address="10.0.2.1"))


@pytest.mark.django_db
def test_a_forwarded_for_header_does_not_buy_a_fresh_address(limits, rita):
    for n in range(3):
        page_sign_in("rita", "wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")

    assert not signed_in(page_sign_in("rita", PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.99"))


@pytest.mark.django_db
def test_sign_in_opens_again_when_the_window_has_passed(limits, rita):
    limits.SORA_LOGIN_WINDOW_SECONDS = 1
    for _ in range(3):
        page_sign_in("rita", "wrong")
    assert not signed_in(page_sign_in("rita", PASSWORD))

    time.sleep(2.1)  # the cache expires the counters; nothing else clears them

    assert signed_in(page_sign_in("rita", PASSWORD))


@pytest.mark.django_db
def test_the_admin_sign_in_is_throttled_too(limits):
    admin = UserFactory(username="ada", is_staff=True, is_superuser=True)
    admin.set_password(PASSWORD)
    admin.save()
    client = Client()
    url = reverse("admin:login")
    for _ in range(3):
        client.post(url, {"username": "ada", "password": "wrong"}, REMOTE_ADDR="10.0.0.1")

    response = client.post(url, {"username": "ada", "password": PASSWORD}, REMOTE_ADDR="10.0.0.1")

    assert response.status_code == 200
    assert "Too many failed sign-ins" in response.content.decode()
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_the_token_api_answers_429_with_retry_after_while_a_name_is_held_back(limits, rita, api):
    url = reverse("auth-token")
    for _ in range(3):
        assert api.post(url, {"username": "rita", "password": "wrong"}, format="json").status_code == 400

    response = api.post(url, {"username": "rita", "password": PASSWORD}, format="json")

    assert response.status_code == 429
    assert response.json()["code"] == "throttled"
    assert response.json()["detail"].startswith("Too many failed sign-ins.")
    assert 0 < int(response["Retry-After"]) <= 900
    # A name that is not text is a 400 on the field, not a crash of the throttle.
    bad = api.post(url, {"username": ["rita"], "password": PASSWORD}, format="json")
    assert bad.status_code == 400 and "username" in bad.json()["errors"]


@pytest.mark.django_db
def test_the_token_api_and_the_login_page_share_one_count(limits, rita, api):
    for _ in range(2):
        api.post(reverse("auth-token"), {"username": "rita", "password": "wrong"}, format="json")
    page_sign_in("rita", "wrong", address="127.0.0.1")

    assert api.post(reverse("auth-token"), {"username": "rita", "password": PASSWORD}, format="json").status_code == 429


# --- API rate limits ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_token_past_its_rate_gets_429_and_others_are_not_affected(settings, api, reviewer, second_reviewer):
    # Per hour, so that the test cannot straddle the end of a window.
    settings.SORA_API_RATES = {"user": "3/hour", "anon": None}
    url = reverse("item-list")
    client = api.as_user(reviewer)
    statuses = [client.get(url).status_code for _ in range(4)]

    assert statuses == [200, 200, 200, 429]
    refused = client.get(url)
    assert refused.json()["code"] == "throttled"
    assert 0 < int(refused["Retry-After"]) <= 3600
    other = type(api)().as_user(second_reviewer)
    assert other.get(url).status_code != 429


@pytest.mark.django_db
def test_calls_without_credentials_are_limited_per_address(settings, api):
    settings.SORA_API_RATES = {"user": None, "anon": "2/hour"}
    url = reverse("auth-token")
    body = {"username": "nobody", "password": "x"}

    statuses = [api.post(url, body, format="json", REMOTE_ADDR="10.0.3.1").status_code for _ in range(3)]

    assert statuses == [400, 400, 429]
    assert api.post(url, body, format="json", REMOTE_ADDR="10.0.3.2").status_code == 400


@pytest.mark.django_db
def test_an_empty_rate_turns_the_limit_off(settings, api, reviewer):
    settings.SORA_API_RATES = {"user": None, "anon": None}
    client = api.as_user(reviewer)

    assert all(client.get(reverse("item-list")).status_code == 200 for _ in range(20))


@pytest.mark.redis
@pytest.mark.django_db
def test_every_web_node_sees_the_same_counts_through_redis(settings, api, reviewer):
    """Two cache connections stand for two web processes: what one counted, the other refuses."""
    assert settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    settings.SORA_API_RATES = {"user": "2/hour", "anon": None}
    client = api.as_user(reviewer)
    client.get(reverse("item-list"))
    client.get(reverse("item-list"))

    first = caches["default"]
    caches["default"] = caches.create_connection("default")  # a connection of its own, as another process has
    assert caches["default"] is not first

    assert client.get(reverse("item-list")).status_code == 429
    # Every counter has an expiry, set in the same round trip as the count (never a lockout for good).
    keys = first._cache.get_client(write=False).keys(f"{settings.CACHES['default']['KEY_PREFIX']}:*api-rate*")
    assert keys and all(0 < first._cache.get_client(write=False).ttl(key) <= 3600 for key in keys)


@pytest.mark.django_db
def test_a_name_sent_as_a_number_is_held_back_like_any_other(limits, api):
    user = UserFactory(username="12345")
    user.set_password(PASSWORD)
    user.save()
    url = reverse("auth-token")
    for _ in range(3):
        assert api.post(url, {"username": 12345, "password": "wrong"}, format="json").status_code == 400

    assert api.post(url, {"username": 12345, "password": PASSWORD}, format="json").status_code == 429
    assert api.post(url, {"username": "12345", "password": PASSWORD}, format="json").status_code == 429


@pytest.mark.django_db
def test_an_ipv6_client_is_counted_per_64_network(limits, rita):
    for n in range(3):
        page_sign_in("rita", "wrong", address=f"2001:db8:1:2::{n + 1}")

    assert not signed_in(page_sign_in("rita", PASSWORD, address="2001:db8:1:2::ffff"))
    assert signed_in(page_sign_in("rita", PASSWORD, address="2001:db8:1:3::1"))


@pytest.mark.django_db
def test_refusals_are_audited_once_per_window_not_once_each(limits, rita):
    for _ in range(3):
        page_sign_in("rita", "wrong")
    for _ in range(5):
        page_sign_in("rita", PASSWORD)

    assert AuditEvent.objects.filter(verb="auth.login_throttled").count() == 1
