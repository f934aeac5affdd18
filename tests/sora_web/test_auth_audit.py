"""Sign-ins, sign-outs, failed sign-ins and API tokens issued are in the audit log, with the name tried and the
address, never the password."""

import json

import pytest

from annotations.models import AuditEvent
from tests.factories import UserFactory


def audit(verb: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(verb=verb).order_by("id"))


def test_signing_in_and_out_of_the_pages_is_audited(client, db):
    user = UserFactory(username="ines")
    user.set_password("a-long-passphrase")
    user.save()

    client.post("/accounts/login/", {"username": "ines", "password": "wrong"})
    client.post("/accounts/login/", {"username": "ines", "password": "a-long-passphrase"})
    client.post("/accounts/logout/")

    [failed] = audit("auth.login_failed")
    [login] = audit("auth.login")
    [logout] = audit("auth.logout")
    assert failed.actor is None and failed.after == {"username": "ines", "address": "127.0.0.1"}
    assert login.actor == user and login.target_id == str(user.pk)
    assert logout.actor == user
    assert "wrong" not in json.dumps(failed.after) and "passphrase" not in json.dumps(login.after)


def test_api_tokens_issued_and_refused_are_audited(api, db):
    user = UserFactory(username="helpdesk-bot")
    user.set_password("another-long-passphrase")
    user.save()

    refused = api.post("/api/v1/auth/token/", {"username": "helpdesk-bot", "password": "nope"}, format="json")
    issued = api.post(
        "/api/v1/auth/token/", {"username": "helpdesk-bot", "password": "another-long-passphrase"}, format="json"
    )

    assert refused.status_code == 400 and issued.status_code == 200 and issued.json()["token"]
    assert [e.after["username"] for e in audit("auth.login_failed")] == ["helpdesk-bot"]
    [token_event] = audit("auth.token_issued")
    assert token_event.actor == user and issued.json()["token"] not in json.dumps(token_event.after)


TOKEN = "/api/v1/auth/token/"


@pytest.mark.parametrize("typed", [r"nul\u0000name", r"lone\udc00surrogate"], ids=["nul", "lone-surrogate"])
@pytest.mark.parametrize("held_back", [False, True], ids=["free", "address-held-back"])
def test_a_name_that_is_not_text_is_refused_by_name_before_the_throttle(api, db, settings, typed, held_back):
    # Found by the fuzzer (tests/fuzz): the throttle hashed and audited the name as typed, so a lone surrogate was
    # a 500 on both databases and a NUL one on PostgreSQL (its jsonb refuses it) once the address was held back.
    settings.SORA_LOGIN_FAILURES_PER_ADDRESS = 1 if held_back else 100
    if held_back:
        api.post(TOKEN, {"username": "someone", "password": "wrong"}, format="json")  # the address's one failure
    body = ('{"username": "' + typed + '", "password": "wrong"}').encode()

    response = api.generic("POST", TOKEN, data=body, content_type="application/json")

    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == ["username"]
    assert audit("auth.login_throttled") == []
