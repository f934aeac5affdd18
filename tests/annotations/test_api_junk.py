"""No input produces a 500 (PRODUCT.md §5): junk sent to every write endpoint gets a JSON 4xx.

Validation errors name the field under "errors"; every error has a "detail". Refused
writes leave no trace: no item, claim or review is created and the leased item is unchanged.

The Django test client re-raises a view's exception, so a crash fails a test outright; the
raw-body tests turn that off and assert on the status code instead, to report what came back.
"""

import json

import pytest
from django.conf import settings

from annotations import services
from annotations.models import Claim, Correction, Item, Review

ITEMS = "/api/v1/items/"
CLAIM = "/api/v1/queue/claim/"
TOKEN = "/api/v1/auth/token/"
NESTED_100K_ARRAYS = b"[" * 100_000 + b"]" * 100_000
NESTED_100K_OBJECTS = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


def on_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql")


def assert_json_error(response, *, status: int | tuple[int, ...] | None = None) -> dict:
    """A 4xx (or exactly `status`) with a JSON body that has a human-readable "detail"."""
    allowed = (status,) if isinstance(status, int) else status
    if allowed:
        assert response.status_code in allowed, (response.status_code, response.content[:500])
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body


def assert_field_error(response, *fields: str) -> None:
    body = assert_json_error(response, status=400)
    assert set(fields) <= set(body.get("errors", {})), body


def post_raw(api, url: str, body: bytes, content_type: str = "application/json"):
    api.raise_request_exception = False
    return api.generic("POST", url, data=body, content_type=content_type)


@pytest.fixture
def submitter(api, integration):
    return api.as_user(integration)


@pytest.fixture
def valid_item(domain) -> dict:
    # A review-only item (it has a draft), so a valid request starts no generation.
    return {"domain": domain.slug, "input": "Where is my parcel?", "draft": "It is on its way.", "priority": 1}


@pytest.fixture
def item_count(db):
    before = Item.objects.count()
    return lambda: Item.objects.count() - before


def test_the_valid_base_request_is_accepted(submitter, valid_item, item_count):
    # Guards the junk tests below: each changes one thing in this request.
    response = submitter.post(ITEMS, valid_item, format="json")
    assert response.status_code == 201, response.content
    assert item_count() == 1


# --- POST /api/v1/items/: one bad field -------------------------------------

ITEM_FIELD_JUNK = [
    pytest.param("input", 12345, id="input-number"),
    pytest.param("input", ["a", "b"], id="input-list"),
    pytest.param("input", {"text": "a"}, id="input-object"),
    pytest.param("input", True, id="input-bool"),
    pytest.param("input", None, id="input-null"),
    pytest.param("input", "", id="input-empty"),
    pytest.param("input", "x" * 200_001, id="input-200001-chars"),
    pytest.param("input", "hello\u0000world", id="input-null-char"),
    pytest.param("priority", "high", id="priority-string"),
    pytest.param("priority", 1.5, id="priority-float"),
    pytest.param("priority", 10**30, id="priority-huge"),
    pytest.param("priority", -(10**30), id="priority-huge-negative"),
    pytest.param("priority", 101, id="priority-above-range"),
    pytest.param("priority", [1], id="priority-list"),
    pytest.param("priority", True, id="priority-bool"),
    pytest.param("metadata", [1, 2], id="metadata-list"),
    pytest.param("metadata", "order=1", id="metadata-string"),
    pytest.param("metadata", 7, id="metadata-number"),
    pytest.param("metadata", {"order\u0000": 1}, id="metadata-null-char-in-key"),
    pytest.param("metadata", {"order": "A\u0000B"}, id="metadata-null-char-in-value"),
    pytest.param("metadata", {"deep": [{"x": ["\u0000"]}]}, id="metadata-null-char-nested"),
    pytest.param("external_id", "x" * 201, id="external_id-201-chars"),
    pytest.param("external_id", "ext\u0000id", id="external_id-null-char"),
    pytest.param("external_id", ["a"], id="external_id-list"),
    pytest.param("domain", "no_such_domain", id="domain-unknown"),
    pytest.param("domain", "x" * 65, id="domain-too-long"),
    pytest.param("domain", "\u0000", id="domain-null-char"),
    pytest.param("domain", None, id="domain-null"),
    pytest.param("domain", {"slug": "x"}, id="domain-object"),
    pytest.param("draft", "", id="draft-empty"),
    pytest.param("draft", ["a"], id="draft-list"),
    pytest.param("draft", "d\u0000", id="draft-null-char"),
    pytest.param("draft", "x" * 200_001, id="draft-200001-chars"),
]


@pytest.mark.parametrize(("field", "value"), ITEM_FIELD_JUNK)
def test_item_submit_refuses_a_bad_field_by_name(submitter, valid_item, item_count, field, value):
    # given a valid submission with one junk field
    body = {**valid_item, field: value}
    # when it is posted
    response = submitter.post(ITEMS, body, format="json")
    # then it is a 400 naming that field, and no item was created
    assert_field_error(response, field)
    assert item_count() == 0


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        (("domain", "input", "draft", "priority"), ("domain", "input")),
        (("domain",), ("domain",)),
        (("input",), ("input",)),
    ],
    ids=["everything", "domain", "input"],
)
def test_item_submit_names_missing_required_fields(submitter, valid_item, item_count, missing, named):
    body = {key: value for key, value in valid_item.items() if key not in missing}
    response = submitter.post(ITEMS, body, format="json")
    assert_field_error(response, *named)
    assert item_count() == 0


def test_item_submit_refuses_an_inactive_domain(submitter, valid_item, domain, item_count):
    domain.is_active = False
    domain.save(update_fields=["is_active"])
    assert_field_error(submitter.post(ITEMS, valid_item, format="json"), "domain")
    assert item_count() == 0


# --- POST /api/v1/items/: bodies that are not a valid JSON object -------------


def _item_body(domain_slug: str, metadata: str) -> bytes:
    return f'{{"domain": "{domain_slug}", "input": "x", "draft": "y", "metadata": {metadata}}}'.encode()


RAW_ITEM_BODIES = [
    # (id, body (bytes, or a function of the domain slug), content type, allowed statuses, fields named)
    ("malformed", b'{"domain": "x", "input": ', "application/json", 400, ()),
    ("trailing-garbage", b'{"domain": "x"} and more', "application/json", 400, ()),
    ("single-quotes", b"{'domain': 'x'}", "application/json", 400, ()),
    ("nested-100k-arrays", NESTED_100K_ARRAYS, "application/json", 400, ()),
    ("nested-100k-objects", NESTED_100K_OBJECTS, "application/json", 400, ()),
    ("nested-100k-in-metadata", lambda s: _item_body(s, NESTED_100K_ARRAYS.decode()), "application/json", 400, ()),
    ("non-utf8", b'{"domain": "\xff\xfe", "input": "\xc3\x28"}', "application/json", 400, ()),
    ("utf16-declared-not-sent", b'{"domain": "x"}', "application/json; charset=utf-16", 400, ()),
    ("NaN", lambda s: _item_body(s, '{"a": NaN}'), "application/json", 400, ()),
    ("5000-digit-number", lambda s: _item_body(s, '{"a": %s}' % ("9" * 5000)), "application/json", 400, ()),
    ("lone-surrogate-in-input", b'{"domain": "x", "input": "\\ud800"}', "application/json", 400, ("input",)),
    ("json-null", b"null", "application/json", 400, ()),
    ("json-list", b"[1, 2]", "application/json", 400, ()),
    ("json-string", b'"hello"', "application/json", 400, ()),
    ("json-number", b"42", "application/json", 400, ()),
    ("empty-body", b"", "application/json", 400, ("domain", "input")),
    ("text-plain", b'{"domain": "x", "input": "y"}', "text/plain", 415, ()),
    ("form-encoded", b"domain=x&input=y", "application/x-www-form-urlencoded", 415, ()),
    ("multipart", b"--b\r\n\r\n--b--\r\n", "multipart/form-data; boundary=b", 415, ()),
    ("no-content-type", b'{"domain": "x", "input": "y"}', "", 415, ()),
    ("3MB-body", lambda s: _item_body(s, json.dumps({"blob": "a" * 3_000_000})), "application/json", (400, 413), ()),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "fields"),
    [pytest.param(*case[1:], id=case[0]) for case in RAW_ITEM_BODIES],
)
def test_item_submit_refuses_a_body_that_is_not_a_json_object(
    submitter, domain, item_count, body, content_type, status, fields
):
    raw = body(domain.slug) if callable(body) else body
    response = post_raw(submitter, ITEMS, raw, content_type)
    result = assert_json_error(response, status=status)
    assert set(fields) <= set(result.get("errors", {})), result
    assert item_count() == 0


METADATA_EDGE_CASES = [
    pytest.param('{"a": 1e400}', id="metadata-infinity"),
    pytest.param(
        '{"a": "\\ud800"}',
        id="metadata-lone-surrogate-value",
    ),
    pytest.param(
        '{"\\udfff": 1}',
        id="metadata-lone-surrogate-key",
    ),
    pytest.param(f'{{"a": {10**30}}}', id="metadata-huge-int"),
    pytest.param('{"a": -1e308, "b": 1e-400}', id="metadata-extreme-floats"),
]


@pytest.mark.parametrize("metadata", METADATA_EDGE_CASES)
def test_item_metadata_that_json_can_carry_is_stored_or_refused_never_a_500(submitter, domain, item_count, metadata):
    # given metadata that parses as JSON but is awkward to store or echo back
    response = post_raw(submitter, ITEMS, _item_body(domain.slug, metadata))
    # then it is either stored (201) or refused with a JSON 4xx, naming metadata if a validation error
    if response.status_code == 201:
        assert item_count() == 1
        return
    body = assert_json_error(response)
    if "errors" in body:
        assert "metadata" in body["errors"], body
    assert item_count() == 0


def test_item_metadata_nested_as_deep_as_the_parser_allows_is_not_a_500(submitter, domain):
    # given metadata nested at every depth up to well past the parser's limit
    statuses = {}
    for depth in range(5, 1501, 5):
        metadata = '{"a": %s}' % ("[" * depth + "]" * depth)
        response = post_raw(submitter, ITEMS, _item_body(domain.slug, metadata))
        statuses[depth] = response.status_code
    # then each was stored or refused, none crashed
    crashed = {depth: status for depth, status in statuses.items() if status >= 500}
    assert not crashed, crashed


# --- Idempotency-Key --------------------------------------------------------


@pytest.mark.parametrize("key", ["k" * 256, "k" * 300, "key\u0000key"], ids=["256-chars", "300-chars", "null-char"])
def test_item_submit_refuses_a_bad_idempotency_key(submitter, valid_item, item_count, key):
    response = submitter.post(ITEMS, valid_item, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert_field_error(response, "Idempotency-Key")
    assert item_count() == 0


def test_idempotency_key_of_255_chars_is_accepted(submitter, valid_item, item_count):
    response = submitter.post(ITEMS, valid_item, format="json", HTTP_IDEMPOTENCY_KEY="k" * 255)
    assert response.status_code == 201, response.content
    assert item_count() == 1


def test_same_idempotency_key_and_body_returns_the_same_item(submitter, valid_item, item_count):
    # given a first submission with a key
    first = submitter.post(ITEMS, valid_item, format="json", HTTP_IDEMPOTENCY_KEY="order-42")
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first
    # when it is sent again, the same body with its keys in another order
    again = submitter.post(ITEMS, dict(reversed(valid_item.items())), format="json", HTTP_IDEMPOTENCY_KEY="order-42")
    # then the first item comes back, marked as a replay, and only one item exists
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert item_count() == 1


def test_same_idempotency_key_with_another_body_is_refused(submitter, valid_item, item_count):
    first = submitter.post(ITEMS, valid_item, format="json", HTTP_IDEMPOTENCY_KEY="order-43")
    assert first.status_code == 201
    response = submitter.post(
        ITEMS, {**valid_item, "input": "Something else"}, format="json", HTTP_IDEMPOTENCY_KEY="order-43"
    )
    assert_json_error(response, status=422)
    assert item_count() == 1
    assert Item.objects.get().input == valid_item["input"]


def test_idempotency_keys_are_per_submitter(api, integration, manager, valid_item, item_count):
    # given an integration used a key
    first = api.as_user(integration).post(ITEMS, valid_item, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    # when another submitter uses the same key
    other = api.as_user(manager).post(ITEMS, valid_item, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    # then they get an item of their own, not the integration's
    assert first.status_code == other.status_code == 201
    assert other.json()["id"] != first.json()["id"]
    assert "Idempotent-Replayed" not in other
    assert item_count() == 2


# --- Item ids in the URL ----------------------------------------------------

ITEM_URLS = [
    "/api/v1/items/{id}/",
    "/api/v1/items/{id}/heartbeat/",
    "/api/v1/items/{id}/release/",
    "/api/v1/items/{id}/reviews/",
]
JUNK_IDS = ["99999999999999999999999", "999999999999999999", "9223372036854775808", "2147483648", "0", "-1", "1.5"]


@pytest.mark.parametrize("item_id", JUNK_IDS)
@pytest.mark.parametrize("url", ITEM_URLS)
def test_an_item_id_that_names_no_item_is_404(api, admin_user, item, url, item_id):
    # given the admin, who may see every item and call every item endpoint
    api.as_user(admin_user)
    path = url.replace("{id}", item_id)
    # when the id names no item
    if url == "/api/v1/items/{id}/":
        response = api.get(path)
    elif url.endswith("/reviews/"):
        response = api.post(path, {"decision": "approve", "version": 1}, format="json")
    else:
        response = api.post(path)
    # then it is a JSON 404
    assert_json_error(response, status=404)


# --- POST /api/v1/queue/claim/ ----------------------------------------------


@pytest.fixture
def reviewer_api(api, reviewer):
    return api.as_user(reviewer)


@pytest.mark.parametrize(
    "domain_value",
    [["a"], {"slug": "a"}, "x" * 65, "\u0000", "no_such_domain", 5, None, ""],
    ids=["list", "object", "too-long", "null-char", "unknown", "number", "null", "empty"],
)
def test_claim_refuses_a_bad_domain_by_name(reviewer_api, item, domain_value):
    response = reviewer_api.post(CLAIM, {"domain": domain_value}, format="json")
    assert_field_error(response, "domain")
    assert not Claim.objects.exists()


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        pytest.param(b'{"domain": ', "application/json", 400, id="malformed"),
        pytest.param(NESTED_100K_ARRAYS, "application/json", 400, id="nested-100k"),
        pytest.param(b'{"domain": "\xff"}', "application/json", 400, id="non-utf8"),
        pytest.param(b"[]", "application/json", 400, id="json-list"),
        pytest.param(b'{"domain": "x"}', "text/plain", 415, id="text-plain"),
        pytest.param(b"domain=x", "application/x-www-form-urlencoded", 415, id="form-encoded"),
    ],
)
def test_claim_refuses_a_body_that_is_not_a_json_object(reviewer_api, item, body, content_type, status):
    assert_json_error(post_raw(reviewer_api, CLAIM, body, content_type), status=status)
    assert not Claim.objects.exists()


def test_claim_with_an_empty_body_claims(reviewer_api, item):
    response = post_raw(reviewer_api, CLAIM, b"")
    assert response.status_code == 200
    assert response.json()["id"] == item.pk


# --- POST /api/v1/items/{id}/reviews/ ---------------------------------------


@pytest.fixture
def leased_item(item, reviewer) -> Item:
    """`item`, claimed by `reviewer`; the domain's rubric is accuracy and tone."""
    claimed = services.item_claim_next(reviewer=reviewer, domain=item.domain.slug)
    assert claimed == item
    item.refresh_from_db()
    return item


def assert_review_not_written(item: Item) -> None:
    before = (item.status, item.version, item.lease_owner_id)
    item.refresh_from_db()
    assert (item.status, item.version, item.lease_owner_id) == before
    assert not Review.objects.exists()
    assert not Correction.objects.exists()


REVIEW_FIELD_JUNK = [
    pytest.param("decision", "maybe", id="decision-unknown"),
    pytest.param("decision", None, id="decision-null"),
    pytest.param("decision", ["approve"], id="decision-list"),
    pytest.param("decision", 1, id="decision-number"),
    pytest.param("version", "three", id="version-string"),
    pytest.param("version", -1, id="version-negative"),
    pytest.param("version", 0, id="version-zero"),
    pytest.param("version", 10**30, id="version-huge"),
    pytest.param("version", 1.5, id="version-float"),
    pytest.param("version", None, id="version-null"),
    pytest.param("version", [1], id="version-list"),
    pytest.param("final_text", "   ", id="final_text-blank"),
    pytest.param("final_text", "x" * 200_001, id="final_text-200001-chars"),
    pytest.param("final_text", "ok\u0000", id="final_text-null-char"),
    pytest.param("final_text", ["a"], id="final_text-list"),
    pytest.param("reason", "x" * 5001, id="reason-too-long"),
    pytest.param("reason", "why\u0000", id="reason-null-char"),
    pytest.param("scores", [5, 5], id="scores-list"),
    pytest.param("scores", "5", id="scores-string"),
    pytest.param("scores", {"no_such_rubric": 3}, id="scores-unknown-rubric"),
    pytest.param("scores", {"accuracy": 0}, id="score-0"),
    pytest.param("scores", {"accuracy": 6}, id="score-6"),
    pytest.param("scores", {"accuracy": "5"}, id="score-string"),
    pytest.param("scores", {"accuracy": True}, id="score-true"),
    pytest.param("scores", {"accuracy": 4.5}, id="score-float"),
    pytest.param("scores", {"accuracy": None}, id="score-null"),
    pytest.param("scores", {"accuracy": 10**30}, id="score-huge"),
    pytest.param("scores", {"accuracy": [5]}, id="score-list"),
    pytest.param("scores", {"accuracy\u0000": 3}, id="scores-null-char-in-key"),
]


@pytest.mark.parametrize(("field", "value"), REVIEW_FIELD_JUNK)
def test_review_refuses_a_bad_field_by_name(api, reviewer, leased_item, field, value):
    # given the claimant approves with one junk field
    body = {"decision": "approve", "version": leased_item.version, field: value}
    # when they post it
    response = api.as_user(reviewer).post(f"/api/v1/items/{leased_item.pk}/reviews/", body, format="json")
    # then it is a 400 naming the field, and nothing was written
    assert_field_error(response, field)
    assert_review_not_written(leased_item)


def test_review_names_missing_fields(api, reviewer, leased_item):
    response = api.as_user(reviewer).post(f"/api/v1/items/{leased_item.pk}/reviews/", {}, format="json")
    assert_field_error(response, "decision", "version")
    assert_review_not_written(leased_item)


def test_rejection_without_a_reason_is_refused(api, reviewer, leased_item):
    body = {"decision": "reject", "version": leased_item.version}
    response = api.as_user(reviewer).post(f"/api/v1/items/{leased_item.pk}/reviews/", body, format="json")
    assert_field_error(response, "reason")
    assert_review_not_written(leased_item)


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        pytest.param(b'{"decision": ', "application/json", 400, id="malformed"),
        pytest.param(NESTED_100K_OBJECTS, "application/json", 400, id="nested-100k"),
        pytest.param(b'{"decision": "approve", "version": 2, "reason": "\xff"}', "application/json", 400,
                     id="non-utf8"),
        pytest.param(b'{"decision": "approve", "version": 2, "scores": {"accuracy": 1e400}}', "application/json", 400,
                     id="score-infinity"),
        pytest.param(b'{"decision": "approve", "version": 2, "scores": {"\\ud800": 3}}', "application/json", 400,
                     id="scores-lone-surrogate-key"),
        pytest.param(b"", "application/json", 400, id="empty-body"),
        pytest.param(b'{"decision": "approve", "version": 2}', "text/plain", 415, id="text-plain"),
        pytest.param(b"decision=approve&version=2", "application/x-www-form-urlencoded", 415, id="form-encoded"),
    ],
)  # fmt: skip
def test_review_refuses_a_body_that_is_not_a_json_object(api, reviewer, leased_item, body, content_type, status):
    assert leased_item.version == 2  # the bodies above carry the current version
    response = post_raw(api.as_user(reviewer), f"/api/v1/items/{leased_item.pk}/reviews/", body, content_type)
    assert_json_error(response, status=status)
    assert_review_not_written(leased_item)


def test_review_scores_nested_as_deep_as_the_parser_allows_are_not_a_500(api, reviewer, leased_item):
    api.as_user(reviewer)
    statuses = {}
    for depth in range(10, 2001, 10):
        nested = "[" * depth + "]" * depth
        body = f'{{"decision": "approve", "version": {leased_item.version}, "scores": {{"accuracy": {nested}}}}}'
        statuses[depth] = post_raw(api, f"/api/v1/items/{leased_item.pk}/reviews/", body.encode()).status_code
    crashed = {depth: status for depth, status in statuses.items() if status >= 500}
    assert not crashed, crashed
    assert_review_not_written(leased_item)


# --- heartbeat takes no body: junk in it is ignored; release reads one and refuses junk ----


JUNK_BODIES = [
    pytest.param(b'{"x": ', "application/json", id="malformed"),
    pytest.param(NESTED_100K_ARRAYS, "application/json", id="nested-100k"),
    pytest.param(b"\xff\xfe", "application/json", id="non-utf8"),
    pytest.param(b"hello", "text/plain", id="text-plain"),
]


@pytest.mark.parametrize(("body", "content_type"), JUNK_BODIES)
def test_heartbeat_ignores_junk_bodies(api, reviewer, leased_item, body, content_type):
    response = post_raw(api.as_user(reviewer), f"/api/v1/items/{leased_item.pk}/heartbeat/", body, content_type)
    assert response.status_code == 200, response.content[:500]
    leased_item.refresh_from_db()
    assert leased_item.status == "in_review"


@pytest.mark.parametrize(("body", "content_type"), JUNK_BODIES)
def test_release_refuses_junk_bodies_and_keeps_the_lease(api, reviewer, leased_item, body, content_type):
    response = post_raw(api.as_user(reviewer), f"/api/v1/items/{leased_item.pk}/release/", body, content_type)
    assert response.status_code in (400, 415), response.content[:500]
    assert response.json()["detail"]
    leased_item.refresh_from_db()
    assert leased_item.status == "in_review"


def test_release_with_a_non_boolean_skip_names_the_field(api, reviewer, leased_item):
    response = api.as_user(reviewer).post(f"/api/v1/items/{leased_item.pk}/release/", {"skip": "later"}, format="json")
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["skip"]


# --- POST /api/v1/auth/token/ -----------------------------------------------


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        pytest.param({}, ("username", "password"), id="empty"),
        pytest.param({"username": ["rita"], "password": "x"}, ("username",), id="username-list"),
        pytest.param({"username": {"a": 1}, "password": "x"}, ("username",), id="username-object"),
        pytest.param({"username": "ri\u0000ta", "password": "x"}, ("username",), id="username-null-char"),
        pytest.param({"username": "rita", "password": "p\u0000w"}, ("password",), id="password-null-char"),
        pytest.param({"username": "rita", "password": None}, ("password",), id="password-null"),
        pytest.param({"username": "x" * 10_000, "password": "x" * 10_000}, (), id="10k-chars"),
    ],
)
def test_token_endpoint_refuses_junk_credentials(api, reviewer, body, fields):
    response = api.post(TOKEN, body, format="json")
    result = assert_json_error(response, status=400)
    assert set(fields) <= set(result.get("errors", {})), result
    assert "token" not in result


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        pytest.param(b'{"username": ', "application/json", 400, id="malformed"),
        pytest.param(NESTED_100K_ARRAYS, "application/json", 400, id="nested-100k"),
        pytest.param(b'{"username": "\xff", "password": "x"}', "application/json", 400, id="non-utf8"),
        pytest.param(b"username=rita&password=x", "application/x-www-form-urlencoded", 415, id="form-encoded"),
        pytest.param(b"rita:x", "text/plain", 415, id="text-plain"),
    ],
)
def test_token_endpoint_refuses_a_body_that_is_not_a_json_object(api, reviewer, body, content_type, status):
    assert_json_error(post_raw(api, TOKEN, body, content_type), status=status)


# --- Authorization headers --------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Token abc\u0000def", id="null-char"),
        pytest.param("Token " + "a" * 10_000, id="10k-chars"),
        pytest.param("Token \u00e9\u00e9", id="non-ascii"),
        pytest.param("Token", id="no-key"),
        pytest.param("Token a b", id="two-keys"),
        pytest.param("Basic !!!notbase64", id="basic-junk"),
    ],
)
def test_a_junk_authorization_header_is_a_json_4xx(api, db, header):
    # The endpoint is the public token endpoint too: a bad header must not crash it either.
    api.raise_request_exception = False
    api.credentials(HTTP_AUTHORIZATION=header)
    assert_json_error(api.get(ITEMS))


# --- GET /api/v1/items/ filters ---------------------------------------------


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        pytest.param("?status=nope", 400, "status", id="status-unknown"),
        pytest.param("?domain=" + "x" * 65, 400, "domain", id="domain-too-long"),
        pytest.param("?external_id=a%00b", 400, "external_id", id="external_id-null-char"),
        pytest.param("?external_id=" + "x" * 201, 400, "external_id", id="external_id-too-long"),
        pytest.param("?page=0", 404, None, id="page-0"),
        pytest.param("?page=abc", 404, None, id="page-abc"),
        pytest.param("?page=99999999999999999999999", 404, None, id="page-huge"),
        pytest.param("?page=%00", 404, None, id="page-null-char"),
    ],
)
def test_item_list_refuses_junk_filters(api, manager, item, query, status, field):
    response = api.as_user(manager).get(ITEMS + query)
    body = assert_json_error(response, status=status)
    if field:
        assert field in body["errors"], body
