"""The API fuzzed from its own OpenAPI schema (PRODUCT.md §8: "the API fuzzed from its own OpenAPI schema gives
no 500"). Schemathesis reads /api/schema/ as a client would, generates requests for every operation (ones the
schema allows and ones it does not) and checks every answer: never a 5xx; status code, content type, headers and
body as documented (errors included: sora_web/api_errors.py documents them); authentication enforced.

How it runs:

- In-process, through Django's WSGI application, in the test's own thread: the app uses the test's database
  connection, so it sees the rows seeded below, and everything is rolled back afterwards (pytest-django `db`).
- Inside that one transaction nothing commits, so `transaction.on_commit` work never starts: no draft is generated
  (no model is loaded), no webhook is sent (the ping and redeliver operations included), no fine-tuning runs. So
  no operation has to be left out; the requests and their answers are the real ones, and what runs after the
  commit has its own tests (tests/annotations, tests/webhooks, tests/models_app).
- Each operation runs as the role PRODUCT.md §5 gives it (integration submits, a reviewer claims and reviews, a
  manager runs models and fine-tuning, an admin webhooks), so the fuzzer reaches the code behind the permission
  checks instead of collecting 403s; ignored_auth takes the token away once per operation and expects a 401.
- Path ids, domains, versions, the Idempotency-Key and the sign-in name are often values the server knows (an
  item being reviewed by that reviewer, approved and rejected items, model versions, a fine-tune job, a dataset
  snapshot, webhook endpoints and deliveries), otherwise whatever the fuzzer drew.
- Host names are not looked up: saving a webhook URL resolves its host, and the fuzzer invents hosts.

Checks left out, on purpose: positive_data_acceptance (a request the schema allows is still refused for an
unknown domain, a stale version or a lost lease: rules a schema cannot state) and negative_data_rejection (an
empty query value, `?status=`, means "no filter" as in an HTML form; and the known values above can turn a
broken request into a valid one).

Bounded and reproducible for CI, where it runs on PostgreSQL and on SQLite: a fixed seed, derandomized, no example
database written, SORA_FUZZ_EXAMPLES examples per operation (default 50, about 100 s a backend on 2 cores). For a
longer local run:
    SORA_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/fuzz -q -p no:cacheprovider
"""

import os
import re
import socket
from dataclasses import dataclass, field
from types import SimpleNamespace

import hypothesis
import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from annotations import roles, services
from annotations.models import Domain
from models_app import finetuning
from models_app.models import ModelVersion
from models_app.services import activate
from tests.factories import UserFactory
from webhooks import addresses
from webhooks import services as webhook_services

PASSWORD = "pass-for-tests-123"  # UserFactory's

EXAMPLES = int(os.environ.get("SORA_FUZZ_EXAMPLES", "50"))
SEED = 20251129

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
    unsupported_method,  # a method the schema does not list is a 405
]


@dataclass
class World:
    tokens: dict[str, str] = field(default_factory=dict)
    # Values the server knows, by path parameter, body field, query parameter or header name; the most
    # interesting first (the fuzzer draws early entries more often).
    known: dict[str, list] = field(default_factory=dict)


def _role_for(method: str, path: str) -> str | None:
    """Who calls this operation (PRODUCT.md §5); None: nobody signed in (getting a token)."""
    if path == "/api/v1/auth/token/":
        return None
    if path == "/api/v1/items/":
        return "integration" if method == "POST" else "reviewer"
    if path.startswith("/api/v1/items/") or path.startswith("/api/v1/queue/"):
        return "reviewer"
    if path.startswith("/api/v1/webhooks/") or path.startswith("/api/v1/deliveries/"):
        return "admin"
    return "manager"


def _seed() -> World:
    """A small, realistic world: three domains (from the migrations), one user per role, items ready, in review,
    approved and rejected, a base model version with a child (active for one domain, so it can be rolled back) and a
    candidate, a queued fine-tune job with its snapshot, webhook endpoints with deliveries in their log."""
    world = World()
    domains = list(Domain.objects.order_by("slug"))
    reviewer = UserFactory(username="fuzz-reviewer", roles=[roles.REVIEWER], domains=domains[:2])
    second = UserFactory(username="fuzz-reviewer2", roles=[roles.REVIEWER], domains=domains)
    users = {
        "reviewer": reviewer,
        "integration": UserFactory(username="fuzz-integration", roles=[roles.INTEGRATION]),
        "manager": UserFactory(username="fuzz-manager", roles=[roles.MODEL_MANAGER]),
        "admin": UserFactory(username="fuzz-admin", is_superuser=True, is_staff=True),
    }
    world.tokens = {role: Token.objects.create(user=user).key for role, user in users.items()}

    base = ModelVersion.objects.create(name="fuzz-base", base_model="/nonexistent/fuzz-base")
    for domain in domains:
        activate(version=base, domain=domain, user=None)
    child = ModelVersion.objects.create(name="fuzz-child", base_model=base.base_model, parent=base)
    activate(version=child, domain=domains[0], user=None)
    candidate = ModelVersion.objects.create(name="fuzz-candidate", base_model=base.base_model, parent=base)

    # Subscribed before the approvals below, so they leave deliveries in its log (not sent: nothing commits).
    endpoints = [
        webhook_services.endpoint_create(
            url=f"http://127.0.0.1:9/fuzz/{n}", events=["item.approved", "item.rejected"], user=users["admin"]
        )
        for n in range(3)
    ]

    items = []
    for n, domain in enumerate([domains[0]] * 8 + domains * 2):
        item, _ = services.item_submit(
            submitted_by=users["integration"],
            domain=domain.slug,
            input=f"Customer message {n}: where is my parcel?",
            draft=f"Hello, parcel {n} is on its way.",
            external_id=f"fuzz-{n}",
            metadata={"order": n},
        )
        items.append(item)
    # A few approved and rejected items (training examples, webhook deliveries), then one left in review.
    for n in range(6):
        claimed = services.item_claim_next(reviewer=second, domain=domains[0].slug)
        decision = "reject" if n == 5 else "approve"
        services.review_submit(
            item_id=claimed.pk,
            reviewer=second,
            decision=decision,
            version=claimed.version,
            final_text=f"Hello, parcel {n} is on its way. Kind regards." if decision == "approve" else None,
            reason="Off topic." if decision == "reject" else "",
        )
    in_review = services.item_claim_next(reviewer=reviewer, domain=domains[0].slug)
    job = finetuning.finetune_job_start(domain=domains[0], user=users["manager"])

    world.known = {
        "item_id": [in_review.pk, *(item.pk for item in reversed(items) if item.pk != in_review.pk)],
        "version": [in_review.version, 1, 2],
        # The child first: it can be promoted and rolled back (to the base).
        "version_id": [child.pk, candidate.pk, base.pk],
        "job_id": [job.pk],
        "snapshot_id": [job.snapshot_id],
        "endpoint_id": [endpoint.pk for endpoint in endpoints],
        "delivery_id": list(endpoints[0].deliveries.values_list("pk", flat=True)),
        "domain": [domain.slug for domain in domains],
        "domains": [[domains[0].slug], [domain.slug for domain in domains[1:]]],
        # Never called: nothing commits, so no delivery is sent. The named host is not looked up (offline_dns), so
        # it is refused as a host that does not resolve.
        "url": ["http://127.0.0.1:9/fuzz", "https://hooks.example.com/sora"],
        "Idempotency-Key": ["fuzz-key"],
        "username": ["fuzz-reviewer"],
        "password": [PASSWORD],
    }
    assert all(world.known.values()), world.known  # a seed that made no deliveries (say) would fuzz less than it says
    return world


def _offline_getaddrinfo(host, port, *args, **kwargs):
    """Numeric addresses and localhost only: the host of a webhook URL, which the fuzzer makes up, is not looked up
    (the edge of the world: DNS would leave the machine, and may hang)."""
    if host == "localhost":
        host = "127.0.0.1"
    try:
        return socket.getaddrinfo(host, port, *args, **{**kwargs, "flags": socket.AI_NUMERICHOST})
    except socket.gaierror:
        raise socket.gaierror(socket.EAI_NONAME, f"{host!r} is not looked up in the fuzz run") from None


# What the server knows in the test being run (World.known, filled by the `world` fixture).
KNOWN: dict[str, list] = {}


@pytest.fixture
def world(db):
    seeded = _seed()
    KNOWN.update(seeded.known)
    yield seeded
    KNOWN.clear()


@pytest.fixture(autouse=True)
def offline_dns(monkeypatch):
    # Only where webhook URLs are checked (webhooks/addresses.py): the database and Redis connect as usual.
    offline = SimpleNamespace(
        getaddrinfo=_offline_getaddrinfo, gaierror=socket.gaierror, SOCK_STREAM=socket.SOCK_STREAM
    )
    monkeypatch.setattr(addresses, "socket", offline)


@pytest.fixture(autouse=True)
def connection_kept_across_requests():
    """What Django's own test client does: a finished request would otherwise close the connection that holds the
    test's transaction (it is not in autocommit mode, so it looks broken to close_old_connections)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


# Read from the served schema, as a client would (no database needed: the schema view reads none).
schema = schemathesis.openapi.from_wsgi(
    "/api/schema/?format=json",
    get_wsgi_application(),
    config=schemathesis.Config.from_dict(
        {"seed": SEED, "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"}}
    ),
)


def _sometimes_known(values: dict | None, known: dict[str, list]) -> st.SearchStrategy:
    """`values`, where each field that `known` names sometimes takes a value the server knows (a seeded row's id,
    a domain's slug): the fuzzer then reaches the code past "not found" and "unknown domain"."""
    if not isinstance(values, dict):
        return st.just(values)
    fields = {}
    for name, value in values.items():
        fields[name] = st.just(value)
        if known.get(name) and not isinstance(value, bool):
            # Known values first: Hypothesis starts from the first branch and the first element.
            fields[name] = st.one_of(st.sampled_from(known[name]), fields[name])
    return st.fixed_dictionaries(fields)


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    # Ids are strings of digits in the schema (the `id` path converter); where the fuzzer sent something else (a
    # negative case) it stays.
    ids = {
        name: [str(pk) for pk in KNOWN.get(name, [])]
        for name, value in (path_parameters or {}).items()
        if re.fullmatch("[0-9]{1,18}", str(value))
    }
    return _sometimes_known(path_parameters, ids)


@schema.hook
def flatmap_query(context, query):
    return _sometimes_known(query, KNOWN)


@schema.hook
def flatmap_headers(context, headers):
    return _sometimes_known(headers, KNOWN)


@schema.hook
def flatmap_body(context, body):
    return _sometimes_known(body, KNOWN)


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    # `world` is seeded once per operation, not per example, on purpose: state builds up over the examples (an
    # item claimed, approved, then refused), as it does on a server.
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
def test_every_operation_answers_as_documented(case, world):
    role = _role_for(case.method.upper(), case.path)
    # Passed to the call, not put in the case: the fuzzer's own Authorization header (a security parameter it
    # generates) is replaced, and ignored_auth knows these are the real credentials to take away.
    headers = {"Authorization": f"Token {world.tokens[role]}"} if role else None
    case.call_and_validate(headers=headers, checks=CHECKS)
