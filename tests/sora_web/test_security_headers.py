from django.conf import settings


def test_html_pages_carry_the_content_security_policy(client, db):
    response = client.get("/")

    assert response["Content-Security-Policy"] == settings.SORA_CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in response["Content-Security-Policy"]  # no 'unsafe-inline' for scripts


def test_api_answers_do_not_need_one(client, db):
    assert "Content-Security-Policy" not in client.get("/api/v1/items/")
