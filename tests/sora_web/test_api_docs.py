import pytest


def test_swagger_ui_is_served_from_local_static_files(client, db):
    page = client.get("/api/docs/").content.decode()

    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert "cdn" not in page.lower() and "https://" not in page


def test_schema_describes_the_review_api(client, db):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    for path in [
        "/api/v1/items/",
        "/api/v1/items/{item_id}/",
        "/api/v1/items/{item_id}/reviews/",
        "/api/v1/items/{item_id}/heartbeat/",
        "/api/v1/items/{item_id}/release/",
        "/api/v1/queue/claim/",
        "/api/v1/auth/token/",
    ]:
        assert path in schema["paths"], path
    assert "Idempotency-Key" in str(schema["paths"]["/api/v1/items/"]["post"]["parameters"])


def test_unknown_api_path_is_a_json_404_and_other_paths_are_html(client, db, settings):
    settings.DEBUG = False

    api = client.get("/api/v1/nothing-here/")
    page = client.get("/nothing-here/")

    assert api.status_code == 404 and api.json()["code"] == "not_found"
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")


def test_a_locked_database_is_a_503_with_retry_after():
    from django.db import OperationalError

    from sora_web.api_errors import exception_handler

    response = exception_handler(OperationalError("database is locked"), {})

    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.data["code"] == "busy"


def test_the_schema_builds_without_warnings(db):
    """Fuzzers and client generators read this schema: a warning (an ambiguous enum name, a view it cannot
    describe) means a part of the API it describes wrongly."""
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")


# --- The schema describes what the API answers (found by the fuzzer, tests/fuzz) ------------------------------


def _schema(client) -> dict:
    return client.get("/api/schema/", HTTP_ACCEPT="application/json").json()


def _component(schema: dict, ref: dict) -> dict:
    return schema["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]


LISTS = [
    "/api/v1/items/",
    "/api/v1/models/",
    "/api/v1/finetune-jobs/",
    "/api/v1/datasets/",
    "/api/v1/webhooks/",
    "/api/v1/webhooks/{endpoint_id}/deliveries/",
]


@pytest.mark.parametrize("path", LISTS)
def test_lists_are_documented_as_the_pages_they_answer_with(client, db, path):
    # They were documented as bare arrays while every one answers {"count", "next", "previous", "results"}.
    schema = _schema(client)
    operation = schema["paths"][path]["get"]
    page = _component(schema, operation["responses"]["200"]["content"]["application/json"]["schema"])

    assert set(page["required"]) >= {"count", "results"}
    assert page["properties"]["results"]["type"] == "array"
    assert page["properties"]["next"]["nullable"] is True
    assert "page" in [parameter["name"] for parameter in operation["parameters"]]
    assert "404" in operation["responses"]  # a page past the end


@pytest.mark.parametrize(
    ("component", "field"),
    [
        ("ItemOutput", "lease_owner"),
        ("GenerationOutput", "model_version"),
        ("VersionOutput", "parent"),
        ("JobOutput", "candidate"),
        ("JobOutput", "requested_by"),
    ],
)
def test_fields_the_api_sends_as_null_are_documented_nullable(client, db, component, field):
    # They were documented as strings; a client generated from the schema would refuse the null it gets.
    assert _schema(client)["components"]["schemas"][component]["properties"][field]["nullable"] is True


def test_an_item_nobody_holds_answers_null_where_the_schema_allows_it(api, client, manager, item):
    body = api.as_user(manager).get(f"/api/v1/items/{item.pk}/").json()
    properties = _schema(client)["components"]["schemas"]["ItemDetailOutput"]["properties"]

    assert body["lease_owner"] is None and properties["lease_owner"]["nullable"] is True
    assert body["generations"][0]["model_version"] is None  # a submitted draft: no model wrote it


def test_every_operation_documents_its_errors_with_the_error_body(client, db):
    schema = _schema(client)
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"detail", "code"}

    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"401", "403", "429"} <= set(responses), (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
            if "requestBody" in operation:
                assert {"400", "415"} <= set(responses), (method, path)
            for code, response in responses.items():
                if int(code) >= 400:
                    body = response["content"]["application/json"]["schema"]
                    assert body == {"$ref": "#/components/schemas/Error"}, (method, path, code)


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("post", "/api/v1/items/", "422"),
        ("post", "/api/v1/items/{item_id}/generate/", "409"),
        ("post", "/api/v1/items/{item_id}/heartbeat/", "409"),
        ("post", "/api/v1/items/{item_id}/release/", "409"),
        ("post", "/api/v1/items/{item_id}/reviews/", "409"),
        ("post", "/api/v1/models/{version_id}/promote/", "409"),
        ("post", "/api/v1/models/{version_id}/rollback/", "409"),
        ("post", "/api/v1/finetune-jobs/", "409"),
        ("post", "/api/v1/finetune-jobs/{job_id}/cancel/", "409"),
        ("post", "/api/v1/webhooks/{endpoint_id}/test/", "409"),
        ("post", "/api/v1/deliveries/{delivery_id}/redeliver/", "409"),
    ],
)
def test_conflicts_are_documented_where_the_services_raise_them(client, db, method, path, code):
    assert code in _schema(client)["paths"][path][method]["responses"]


def test_a_conflict_answers_with_the_documented_error_body(api, client, reviewer, item):
    # Nobody holds the item: a review is a 409 whose body the Error component describes.
    response = api.as_user(reviewer).post(
        f"/api/v1/items/{item.pk}/reviews/", {"decision": "approve", "version": item.version}, format="json"
    )
    error = _schema(client)["components"]["schemas"]["Error"]

    assert response.status_code == 409
    assert set(error["required"]) <= set(response.json())
    assert all(isinstance(response.json()[name], str) for name in error["required"])


def test_getting_a_token_needs_no_credentials(client, db):
    # It was documented as requiring a token or a session: a generated client could not sign in.
    assert {} in _schema(client)["paths"]["/api/v1/auth/token/"]["post"]["security"]
