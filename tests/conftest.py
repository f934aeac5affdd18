"""Fixtures for the whole suite.

Tests marked `postgres` / `redis` need those servers (DATABASE_URL / REDIS_URL),
and `browser` tests Debian's `chromium`. They skip on a laptop without them;
with SORA_REQUIRE_SERVICES=1 (CI, which installs chromium) a missing one fails
them instead, so CI can never pass by skipping.
"""

import os
import shutil
import uuid

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from annotations import roles
from annotations.models import Domain
from tests.factories import DomainFactory, ItemFactory, UserFactory, reviewer_factory


def _on_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql")


def _service_available(marker: str) -> bool:
    if marker == "postgres":
        return _on_postgres()
    if marker == "redis":
        return bool(settings.REDIS_URL)
    if marker == "sqlite":
        return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
    if marker == "browser":
        return shutil.which("chromium") is not None
    return True


def pytest_runtest_setup(item):
    for marker in ("postgres", "redis", "sqlite", "browser"):
        if item.get_closest_marker(marker) and not _service_available(marker):
            if marker != "sqlite" and os.environ.get("SORA_REQUIRE_SERVICES") == "1":
                pytest.fail(f"{marker} is required (SORA_REQUIRE_SERVICES=1) but not configured")
            pytest.skip(f"needs {marker}")


@pytest.fixture(autouse=True)
def _cache_per_test(settings):
    """Each test counts sign-in failures and API calls afresh: a key prefix of its own, so nothing is flushed
    from a Redis that the broker and the channel layer share (the keys expire with their windows)."""
    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex[:12]}"}}


@pytest.fixture(autouse=True)
def _fresh_retrieval_indexes():
    """Each test retrieves from its own approvals: a rolled-back test hands its ids back (SQLite reuses them), so
    an index kept from an earlier test could look current to the next."""
    from models_app.retrieval import domain_indexes

    domain_indexes.clear()
    yield
    domain_indexes.clear()


@pytest.fixture
def customer_service(db) -> Domain:
    return Domain.objects.get(slug="customer_service")


@pytest.fixture
def medical_note(db) -> Domain:
    return Domain.objects.get(slug="medical_note")


@pytest.fixture
def domain(db) -> Domain:
    return DomainFactory()


@pytest.fixture
def reviewer(domain):
    return reviewer_factory(domain, username="rita")


@pytest.fixture
def second_reviewer(domain):
    return reviewer_factory(domain, username="sam")


@pytest.fixture
def integration(db):
    return UserFactory(username="helpdesk", roles=[roles.INTEGRATION])


@pytest.fixture
def manager(db):
    return UserFactory(username="mona", roles=[roles.MODEL_MANAGER])


@pytest.fixture
def admin_user(db):
    return UserFactory(username="ada", is_superuser=True, is_staff=True)


@pytest.fixture
def item(domain):
    return ItemFactory(domain=domain)


@pytest.fixture
def api():
    """An API client; `api.as_user(user)` authenticates it with a real token."""

    class Client(APIClient):
        def as_user(self, user):
            from rest_framework.authtoken.models import Token

            token, _ = Token.objects.get_or_create(user=user)
            self.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
            return self

    return Client()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def tiny_model(db, tiny_model_dir):
    """The tiny model registered as a version and active for every domain (as prepare_model does for SmolLM2)."""
    from models_app.services import base_version_register

    version, _ = base_version_register(path=tiny_model_dir, name="tiny-llama", activate_everywhere=True)
    return version
