"""Promote by hand without naming the domain: a version fine-tuned on one domain goes back to that one.

A base model may serve any domain, so it still needs one named; a fine-tuned one is refused for another domain.
The versions and jobs are rows as a finished run leaves them (selectors.version_trained_for reads the job whose
candidate a version, or one of its ancestors, is): no training is needed to check who may serve what.
"""

import uuid

import pytest

from models_app.models import DatasetSnapshot, FineTuneJob, ModelVersion
from models_app.selectors import active_version_for
from models_app.services import activate
from tests.factories import DomainFactory


def promote_url(version: ModelVersion) -> str:
    return f"/api/v1/models/{version.pk}/promote/"


def fine_tuned(domain, base: ModelVersion, name: str) -> ModelVersion:
    """A candidate of a succeeded job of `domain` that started from `base`, kept (not promoted)."""
    candidate = ModelVersion.objects.create(
        name=name, base_model=base.base_model, parent=base, status=ModelVersion.Status.CANDIDATE
    )
    snapshot = DatasetSnapshot.objects.create(
        domain=domain, manifest=[], sha256="0" * 64, train_count=0, heldout_count=0, new_count=0
    )
    FineTuneJob.objects.create(
        domain=domain,
        run_key=uuid.uuid4(),
        snapshot=snapshot,
        base_version=base,
        candidate=candidate,
        status=FineTuneJob.Status.SUCCEEDED,
        outcome=FineTuneJob.Outcome.KEPT_AS_CANDIDATE,
    )
    return candidate


@pytest.fixture
def other_domain(tiny_model):
    other = DomainFactory(slug="other_desk")
    activate(version=tiny_model, domain=other, user=None)
    return other


@pytest.mark.parametrize("body", [{}, None], ids=["empty-json", "no-body"])
def test_a_fine_tuned_version_promoted_without_a_domain_serves_the_domain_it_was_trained_on(
    api, manager, domain, tiny_model, other_domain, body
):
    candidate = fine_tuned(domain, tiny_model, "desk-ft1")

    response = api.as_user(manager).post(promote_url(candidate), body, format="json")

    assert response.status_code == 200, response.json()
    assert (response.json()["status"], response.json()["active_for"]) == ("active", [domain.slug])
    assert active_version_for(domain_id=domain.pk) == candidate
    assert active_version_for(domain_id=other_domain.pk) == tiny_model  # the other domain is left alone


def test_a_hand_made_child_of_a_fine_tuned_version_goes_to_its_ancestors_domain(api, manager, domain, tiny_model):
    trained = fine_tuned(domain, tiny_model, "desk-ft1")
    child = ModelVersion.objects.create(name="desk-ft1-merged", base_model=tiny_model.base_model, parent=trained)

    response = api.as_user(manager).post(promote_url(child), {}, format="json")

    assert response.status_code == 200, response.json()
    assert active_version_for(domain_id=domain.pk) == child


def test_a_base_version_promoted_without_a_domain_is_refused_naming_the_field(api, manager, domain, tiny_model):
    other_base = ModelVersion.objects.create(name="other-base", base_model=tiny_model.base_model)

    response = api.as_user(manager).post(promote_url(other_base), {}, format="json")

    assert response.status_code == 400
    body = response.json()
    assert (body["code"], body["detail"]) == ("invalid", "Invalid input: domain.")
    assert list(body["errors"]) == ["domain"] and "name the domain" in body["errors"]["domain"][0]
    assert active_version_for(domain_id=domain.pk) == tiny_model
    other_base.refresh_from_db()
    assert other_base.status == ModelVersion.Status.CANDIDATE and not other_base.active_for.exists()


def test_a_base_version_may_serve_the_domain_named(api, manager, domain, tiny_model):
    other_base = ModelVersion.objects.create(name="other-base", base_model=tiny_model.base_model)

    response = api.as_user(manager).post(promote_url(other_base), {"domain": domain.slug}, format="json")

    assert response.status_code == 200 and response.json()["active_for"] == [domain.slug]


def test_a_fine_tuned_version_promoted_to_another_named_domain_is_refused(
    api, manager, domain, tiny_model, other_domain
):
    candidate = fine_tuned(domain, tiny_model, "desk-ft1")

    response = api.as_user(manager).post(promote_url(candidate), {"domain": other_domain.slug}, format="json")

    assert response.status_code == 400
    assert f"fine-tuned on {domain.slug!r}" in response.json()["errors"]["domain"][0]
    assert active_version_for(domain_id=other_domain.pk) == tiny_model
    assert active_version_for(domain_id=domain.pk) == tiny_model
    candidate.refresh_from_db()
    assert candidate.status == ModelVersion.Status.CANDIDATE


@pytest.mark.parametrize("body", [{"domain": ""}, {"domain": 7}, {"domain": "no-such-desk"}])
def test_a_bad_domain_named_is_refused_naming_the_field(api, manager, domain, tiny_model, body):
    candidate = fine_tuned(domain, tiny_model, "desk-ft1")

    response = api.as_user(manager).post(promote_url(candidate), body, format="json")

    assert response.status_code == 400 and list(response.json()["errors"]) == ["domain"]
    assert active_version_for(domain_id=domain.pk) == tiny_model


def test_the_schema_documents_the_domain_of_a_promotion_as_optional(client, db):
    schema = client.get("/api/schema/?format=json").json()
    body = schema["paths"]["/api/v1/models/{version_id}/promote/"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    component = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]

    assert "domain" in component["properties"]
    assert "domain" not in component.get("required", [])
    assert body.get("required", False) is False  # an empty body is a valid request
