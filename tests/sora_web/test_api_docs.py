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
