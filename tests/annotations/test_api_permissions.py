"""Who may call what: every API endpoint × every role (PRODUCT.md §5).

The world every test starts from:

- two domains, `home` and `away`;
- `item` in `home`, submitted by the integration `submitter` and claimed (leased) by `claimant`;
- `away_item` in `away`, submitted by `other_integration`, ready for review;
- users: `reviewer` (home, not holding the lease), `claimant` (home, holds the lease),
  `other_reviewer` (away only), `manager` (model_manager), `no_role`, `admin` (superuser)
  and the anonymous client.
"""

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from annotations import roles, services
from annotations.models import Domain, Item, Review
from tests.factories import DomainFactory, ItemFactory, UserFactory, reviewer_factory

PASSWORD = "pass-for-tests-123"  # tests.factories.UserFactory's password

ROLES = (
    "anonymous",
    "no_role",
    "reviewer",
    "claimant",
    "other_reviewer",
    "manager",
    "submitter",
    "other_integration",
    "admin",
)

# Expected status code of each endpoint for each role, in the order of ROLES.
# fmt: off
MATRIX = {
    #                                      anon  none  rev   claim other mgr   subm  o_int admin
    "POST /api/v1/auth/token/":           (200,  200,  200,  200,  200,  200,  200,  200,  200),
    "POST /api/v1/items/":                (401,  403,  403,  403,  403,  201,  201,  201,  201),
    "GET /api/v1/items/":                 (401,  200,  200,  200,  200,  200,  200,  200,  200),
    "GET /api/v1/items/{id}/":            (401,  404,  200,  200,  404,  200,  200,  404,  200),
    "POST /api/v1/queue/claim/":          (401,  403,  204,  204,  200,  403,  403,  403,  200),
    "POST /api/v1/items/{id}/generate/":  (401,  403,  409,  202,  404,  409,  403,  403,  409),
    "POST /api/v1/items/{id}/heartbeat/": (401,  403,  409,  200,  404,  403,  403,  403,  409),
    "POST /api/v1/items/{id}/release/":   (401,  403,  409,  200,  404,  403,  403,  403,  409),
    "POST /api/v1/items/{id}/reviews/":   (401,  403,  409,  201,  404,  403,  403,  403,  409),
    "GET /api/schema/":                   (200,  200,  200,  200,  200,  200,  200,  200,  200),
    "GET /api/docs/":                     (200,  200,  200,  200,  200,  200,  200,  200,  200),
    "GET /healthz":                       (200,  200,  200,  200,  200,  200,  200,  200,  200),
}

# What GET /api/v1/items/ lists for each role (the anonymous client gets a 401).
VISIBLE_ITEMS = {
    "no_role":           set(),
    "reviewer":          {"item"},
    "claimant":          {"item"},
    "other_reviewer":    {"away_item"},
    "manager":           {"item", "away_item"},
    "submitter":         {"item"},
    "other_integration": {"away_item"},
    "admin":             {"item", "away_item"},
}
# fmt: on

# `item` is leased to the claimant, so the only claimable item is `away_item`.
CLAIMED_ITEM = {"other_reviewer": "away_item", "admin": "away_item"}


def _matrix_cases():
    for endpoint, statuses in MATRIX.items():
        assert len(statuses) == len(ROLES), endpoint
        for role, expected in zip(ROLES, statuses, strict=True):
            yield pytest.param(endpoint, role, expected, id=f"{endpoint} as {role}")


@dataclass
class World:
    home: Domain
    away: Domain
    item: Item
    away_item: Item
    users: dict[str, User | None]

    def item_named(self, name: str) -> Item:
        return {"item": self.item, "away_item": self.away_item}[name]


@pytest.fixture
def world(domain, reviewer, second_reviewer, integration, manager, admin_user) -> World:
    home = domain
    away = DomainFactory(slug="away")
    other_integration = UserFactory(username="other-helpdesk", roles=[roles.INTEGRATION])
    item = ItemFactory(domain=home, submitted_by=integration)
    away_item = ItemFactory(domain=away, submitted_by=other_integration)
    claimed = services.item_claim_next(reviewer=reviewer, domain=home.slug)
    assert claimed == item
    item.refresh_from_db()
    users = {
        "anonymous": None,
        "no_role": UserFactory(username="nobody"),
        "reviewer": second_reviewer,
        "claimant": reviewer,
        "other_reviewer": reviewer_factory(away, username="otto"),
        "manager": manager,
        "submitter": integration,
        "other_integration": other_integration,
        "admin": admin_user,
    }
    return World(home=home, away=away, item=item, away_item=away_item, users=users)


def _call(api, world: World, endpoint: str, user: User | None):
    method, path = endpoint.split(" ")
    path = path.replace("{id}", str(world.item.pk))
    if endpoint == "POST /api/v1/auth/token/":
        # The anonymous client asks for the claimant's token: that is how a client logs in.
        username = (user or world.users["claimant"]).username
        return api.post(path, {"username": username, "password": PASSWORD}, format="json")
    if endpoint == "POST /api/v1/items/":
        body = {"domain": world.home.slug, "input": "Where is my parcel?", "draft": "On its way."}
        return api.post(path, body, format="json")
    if endpoint == "POST /api/v1/items/{id}/reviews/":
        return api.post(path, {"decision": "approve", "version": world.item.version}, format="json")
    if method == "POST":
        return api.post(path, {}, format="json")
    return api.get(path)


@pytest.mark.parametrize(("endpoint", "role", "expected"), list(_matrix_cases()))
def test_endpoint_answers_each_role_as_the_matrix_says(api, world, endpoint, role, expected):
    # given a client acting as `role`
    user = world.users[role]
    if user is not None:
        api.as_user(user)
    lease_before = (world.item.status, world.item.version, world.item.lease_owner_id)

    # when it calls the endpoint
    response = _call(api, world, endpoint, user)

    # then the status code is the matrix's, errors are JSON with a "detail"
    assert response.status_code == expected, response.content[:500]
    if expected >= 400:
        assert response["Content-Type"].startswith("application/json")
        assert "detail" in response.json()
    # and a refused call changed nothing on the leased item
    if expected >= 400:
        world.item.refresh_from_db()
        assert (world.item.status, world.item.version, world.item.lease_owner_id) == lease_before
        assert not Review.objects.exists()


@pytest.mark.parametrize("role", [r for r in ROLES if r != "anonymous"])
def test_item_list_shows_only_what_the_role_may_see(api, world, role):
    # given a user of this role
    api.as_user(world.users[role])

    # when they list items
    response = api.get("/api/v1/items/")

    # then they see exactly the items they may see
    assert response.status_code == 200
    body = response.json()
    returned = {row["id"] for row in body["results"]}
    assert returned == {world.item_named(name).pk for name in VISIBLE_ITEMS[role]}
    assert body["count"] == len(VISIBLE_ITEMS[role])


@pytest.mark.parametrize("role", ["other_reviewer", "admin"])
def test_claim_hands_out_the_only_ready_item(api, world, role):
    # given the home item is already leased to the claimant
    user = world.users[role]

    # when a reviewer of another domain (or the admin) claims
    response = api.as_user(user).post("/api/v1/queue/claim/", {}, format="json")

    # then they get the away item with a lease in their name
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == world.item_named(CLAIMED_ITEM[role]).pk
    assert body["lease_owner"] == user.username
    assert body["status"] == "in_review"


def test_claimant_heartbeat_keeps_the_lease(api, world):
    old_expiry = world.item.lease_expires_at
    response = api.as_user(world.users["claimant"]).post(f"/api/v1/items/{world.item.pk}/heartbeat/")
    assert response.status_code == 200
    world.item.refresh_from_db()
    assert world.item.lease_owner == world.users["claimant"]
    assert world.item.lease_expires_at > old_expiry


def test_claimant_release_gives_the_item_back(api, world):
    response = api.as_user(world.users["claimant"]).post(f"/api/v1/items/{world.item.pk}/release/")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert response.json()["lease_owner"] is None


def test_claimant_review_is_recorded(api, world):
    response = api.as_user(world.users["claimant"]).post(
        f"/api/v1/items/{world.item.pk}/reviews/", {"decision": "approve", "version": world.item.version}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["item"]["status"] == "approved"
    assert Review.objects.filter(item=world.item, reviewer=world.users["claimant"]).count() == 1


def test_new_item_belongs_to_whoever_submitted_it(api, world):
    # given a manager (not an integration) submits work
    response = api.as_user(world.users["manager"]).post(
        "/api/v1/items/", {"domain": world.home.slug, "input": "Hello?", "draft": "Hi."}, format="json"
    )
    assert response.status_code == 201
    # then the item is recorded as theirs
    assert Item.objects.get(pk=response.json()["id"]).submitted_by == world.users["manager"]


@pytest.mark.parametrize("role", [r for r in ROLES if r != "anonymous"])
def test_token_endpoint_returns_the_callers_own_token(api, world, role):
    user = world.users[role]
    response = api.post("/api/v1/auth/token/", {"username": user.username, "password": PASSWORD}, format="json")
    assert response.status_code == 200
    assert Token.objects.get(key=response.json()["token"]).user == user


def test_token_endpoint_refuses_a_wrong_password(api, world):
    response = api.post(
        "/api/v1/auth/token/", {"username": world.users["reviewer"].username, "password": "wrong"}, format="json"
    )
    assert response.status_code == 400
    assert "detail" in response.json()
    assert not Token.objects.filter(user=world.users["reviewer"]).exists()


def test_an_unknown_token_is_401(api, world):
    api.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    response = api.get("/api/v1/items/")
    assert response.status_code == 401
    assert "detail" in response.json()


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/", "/healthz"])
def test_public_pages_serve_their_content_to_anonymous(api, db, path):
    response = api.get(path)
    assert response.status_code == 200
    content = response.content.decode()
    expected = {"/api/schema/": "openapi", "/api/docs/": "swagger", "/healthz": '"status": "ok"'}[path]
    assert expected in content.lower()
