"""The model manager's API (PRODUCT.md §5): versions, promote, roll back, fine-tune jobs, dataset exports.
Reviewers and integrations may do none of it."""

import json

import pytest

from models_app.models import FineTuneJob
from models_app.selectors import active_version_for
from models_app.services import activate
from tests.factories import DomainFactory
from tests.models_app.rounds import FLOOR, LEARN, REPLAY_TOLERANCE, approve_round


@pytest.fixture(autouse=True)
def adapters_in_tmp(settings, tmp_path):
    settings.SORA_ADAPTERS_DIR = tmp_path / "adapters"


@pytest.fixture
def approved(domain, reviewer, tiny_model, settings):
    settings.SORA_HELDOUT_PERCENT = 30
    settings.SORA_EVAL_MIN_ITEMS = 3  # the tiny model learns fast: a handful of held-out items decides
    settings.SORA_REPLAY_TOLERANCE = REPLAY_TOLERANCE
    settings.SORA_RETRIEVAL_FINETUNED_FLOOR = FLOOR  # rounds.FLOOR says why
    domain.sampling = {"max_new_tokens": 12}
    domain.save()
    approve_round(reviewer, domain)
    return domain


MANAGER_ONLY = [
    ("get", "/api/v1/models/", None),
    ("post", "/api/v1/models/1/promote/", {"domain": "x"}),
    ("post", "/api/v1/models/1/rollback/", {}),
    ("get", "/api/v1/finetune-jobs/", None),
    ("post", "/api/v1/finetune-jobs/", {"domain": "x"}),
    ("get", "/api/v1/finetune-jobs/1/", None),
    ("post", "/api/v1/finetune-jobs/1/cancel/", {}),
    ("get", "/api/v1/datasets/", None),
    ("get", "/api/v1/datasets/1/export/", None),
]


@pytest.mark.parametrize(("method", "path", "body"), MANAGER_ONLY)
def test_reviewers_and_integrations_may_not_manage_models(api, reviewer, integration, method, path, body):
    for user in (reviewer, integration):
        response = getattr(api.as_user(user), method)(path, body, format="json")
        assert response.status_code == 403, (user, path)
    api.credentials()
    assert getattr(api, method)(path, body, format="json").status_code == 401


def test_a_manager_starts_a_job_watches_it_and_the_candidate_is_promoted(
    api, manager, approved, tiny_model, django_capture_on_commit_callbacks
):
    api.as_user(manager)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            "/api/v1/finetune-jobs/", {"domain": approved.slug, "hyperparameters": LEARN}, format="json"
        )
    assert response.status_code == 201, response.json()
    job_id = response.json()["id"]

    job = api.get(f"/api/v1/finetune-jobs/{job_id}/").json()
    assert (job["status"], job["outcome"]) == ("succeeded", "promoted"), job["evaluation"].get("reasons")
    assert job["loss_history"] and job["evaluation"]["promote"] is True
    listed = api.get("/api/v1/finetune-jobs/").json()["results"][0]
    assert "loss_history" not in listed and listed["loss"] == job["loss_history"][-1][1]
    versions = api.get("/api/v1/models/").json()["results"]
    assert versions[0]["name"] == job["candidate"] and versions[0]["active_for"] == [approved.slug]
    assert versions[0]["parent"] == tiny_model.name

    # Roll back through the API, then promote again by hand.
    response = api.post(f"/api/v1/models/{versions[0]['id']}/rollback/", {}, format="json")
    assert response.status_code == 200 and response.json()["name"] == tiny_model.name
    assert active_version_for(domain_id=approved.pk) == tiny_model
    response = api.post(f"/api/v1/models/{versions[0]['id']}/promote/", {"domain": approved.slug}, format="json")
    assert response.status_code == 200 and response.json()["active_for"] == [approved.slug]

    # Trained on one domain's examples, it does not write another's drafts; a base model may serve any domain.
    other = DomainFactory(slug="news_draft")
    activate(version=tiny_model, domain=other, user=None)
    response = api.post(f"/api/v1/models/{versions[0]['id']}/promote/", {"domain": other.slug}, format="json")
    assert response.status_code == 400 and "fine-tuned on" in response.json()["errors"]["domain"][0]
    assert active_version_for(domain_id=other.pk) == tiny_model


def test_the_snapshot_a_job_trained_on_downloads_as_chat_jsonl(
    api, manager, approved, django_capture_on_commit_callbacks
):
    api.as_user(manager)
    with django_capture_on_commit_callbacks(execute=False):
        api.post("/api/v1/finetune-jobs/", {"domain": approved.slug}, format="json")
    snapshot = api.get("/api/v1/datasets/").json()["results"][0]

    response = api.get(f"/api/v1/datasets/{snapshot['id']}/export/")

    assert response.status_code == 200 and response["Content-Type"] == "application/jsonl"
    lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert len(lines) == snapshot["train_count"] + snapshot["heldout_count"] == approved.items.count()
    assert [m["role"] for m in lines[0]["messages"]][-2:] == ["user", "assistant"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "domain"),
        ({"domain": "no-such-domain"}, "domain"),
        ({"domain": 7}, "domain"),
        ({"domain": "d", "hyperparameters": {"epochs": 0}}, "hyperparameters"),
        ({"domain": "d", "hyperparameters": {"epochs": 1.5}}, "hyperparameters"),
        ({"domain": "d", "hyperparameters": {"learning_rate": "fast"}}, "hyperparameters"),
        ({"domain": "d", "hyperparameters": {"rank": 8}}, "hyperparameters"),
        ({"domain": "d", "hyperparameters": []}, "hyperparameters"),
    ],
)
def test_bad_job_requests_name_the_field(api, manager, approved, body, field):
    response = api.as_user(manager).post("/api/v1/finetune-jobs/", body, format="json")

    assert response.status_code == 400, response.json()
    assert field in response.json()["errors"]
    assert FineTuneJob.objects.count() == 0


def test_a_second_job_while_one_runs_is_a_409(api, manager, approved, django_capture_on_commit_callbacks):
    api.as_user(manager)
    with django_capture_on_commit_callbacks(execute=False):
        assert api.post("/api/v1/finetune-jobs/", {"domain": approved.slug}, format="json").status_code == 201
        response = api.post("/api/v1/finetune-jobs/", {"domain": approved.slug}, format="json")

    assert response.status_code == 409 and "already running" in response.json()["detail"]


def test_cancel_and_missing_rows(api, manager, approved, django_capture_on_commit_callbacks):
    api.as_user(manager)
    with django_capture_on_commit_callbacks(execute=False):
        job_id = api.post("/api/v1/finetune-jobs/", {"domain": approved.slug}, format="json").json()["id"]

    assert api.post(f"/api/v1/finetune-jobs/{job_id}/cancel/").json()["status"] == "cancelled"
    assert api.post(f"/api/v1/finetune-jobs/{job_id}/cancel/").status_code == 409
    for path in ("/api/v1/finetune-jobs/999999/", "/api/v1/datasets/999999/export/"):
        assert api.get(path).status_code == 404
    assert api.post("/api/v1/models/999999/promote/", {"domain": approved.slug}, format="json").status_code == 404
    assert api.post("/api/v1/models/999999999999999999999/rollback/", {}, format="json").status_code == 404
