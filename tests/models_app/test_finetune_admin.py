"""The model manager's admin: start a run from a domain, watch it, read its loss curve and evaluation, promote,
roll back, retire, download the dataset. Reviewers (not staff) never get in; refusals are messages, not 500s."""

import pytest
from django.contrib.admin.sites import site
from django.contrib.messages import get_messages
from django.urls import reverse

from models_app import finetuning
from models_app.admin import FineTuneJobAdmin
from models_app.models import ActiveModel, DatasetSnapshot, FineTuneJob, ModelVersion
from models_app.selectors import active_version_for
from models_app.services import activate
from tests.factories import DomainFactory
from tests.models_app.rounds import FLOOR, LEARN, REPLAY_TOLERANCE, approve_round


@pytest.fixture(autouse=True)
def adapters_in_tmp(settings, tmp_path):
    settings.SORA_ADAPTERS_DIR = tmp_path / "adapters"
    settings.SORA_HELDOUT_PERCENT = 30
    settings.SORA_EVAL_MIN_ITEMS = 3  # the tiny model learns fast: a handful of held-out items decides
    settings.SORA_REPLAY_TOLERANCE = REPLAY_TOLERANCE
    settings.SORA_RETRIEVAL_FINETUNED_FLOOR = FLOOR  # rounds.FLOOR says why
    settings.SORA_FINETUNE_DEFAULTS = LEARN


@pytest.fixture
def staff_manager(manager):
    manager.is_staff = True
    manager.save()
    return manager


@pytest.fixture
def approved(domain, reviewer, tiny_model):
    domain.sampling = {"max_new_tokens": 12}
    domain.save()
    approve_round(reviewer, domain)
    return domain


def action(client, model: str, name: str, pks: list[int]):
    url = reverse(f"admin:{model}_changelist")
    return client.post(url, {"action": name, "_selected_action": pks}, follow=True)


def texts(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_a_manager_starts_a_run_from_the_domain_and_reads_its_curve_and_report(
    client, staff_manager, approved, tiny_model, django_capture_on_commit_callbacks
):
    client.force_login(staff_manager)
    with django_capture_on_commit_callbacks(execute=True):
        response = action(client, "annotations_domain", "start_finetune", [approved.pk])
    job = FineTuneJob.objects.get()
    assert any("queued" in text for text in texts(response))
    assert (job.status, job.outcome) == ("succeeded", "promoted"), job.evaluation.get("reasons")

    page = client.get(reverse("admin:models_app_finetunejob_change", args=[job.pk])).content.decode()
    assert 'id="job-live"' in page and "js/job_live" in page  # live progress over /ws/jobs/{id}/
    assert "<svg" in page and 'id="job-loss"' in page
    assert "edit distance" in page and "Promote: yes" in page
    assert "examples shown" in page and "the k nearest" in page  # what each version was prompted with

    version_page = client.get(reverse("admin:models_app_modelversion_change", args=[job.candidate_id])).content
    assert b'id="version-edit-distance"' in version_page and b'id="version-loss"' in version_page
    assert tiny_model.name.encode() in version_page  # its lineage

    example = approved.training_examples.first()
    example_url = reverse("admin:models_app_trainingexample_change", args=[example.pk])
    examples = client.get(reverse("admin:models_app_trainingexample_changelist") + "?redacted__exact=0")
    assert examples.status_code == 200 and example_url in examples.content.decode()
    example_page = client.get(example_url).content.decode()
    assert "Brightwater Support Team" in example_page and 'name="completion"' not in example_page  # read-only

    snapshots = client.get(reverse("admin:models_app_datasetsnapshot_changelist")).content.decode()
    export = reverse("dataset-export", args=[DatasetSnapshot.objects.get().pk])
    assert export in snapshots
    assert client.get(export).status_code == 200  # the session of a manager downloads it


def test_roll_back_promote_and_retire_from_the_version_list(
    client, staff_manager, approved, tiny_model, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        job = finetuning.finetune_job_start(domain=approved, user=staff_manager)
    job.refresh_from_db()
    candidate = job.candidate
    client.force_login(staff_manager)

    action(client, "models_app_modelversion", "roll_back", [candidate.pk])
    assert active_version_for(domain_id=approved.pk) == tiny_model
    action(client, "models_app_modelversion", "promote", [candidate.pk])
    assert active_version_for(domain_id=approved.pk) == candidate

    refused = action(client, "models_app_modelversion", "retire", [candidate.pk])
    assert any("still writes" in text for text in texts(refused))
    action(client, "models_app_modelversion", "roll_back", [candidate.pk])
    action(client, "models_app_modelversion", "retire", [candidate.pk])
    candidate.refresh_from_db()
    assert candidate.status == ModelVersion.Status.RETIRED


def test_the_active_models_page_refuses_a_version_trained_on_another_domain(
    admin_client, staff_manager, approved, tiny_model, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        job = finetuning.finetune_job_start(domain=approved, user=staff_manager)
    job.refresh_from_db()
    other = DomainFactory(slug="news_draft")
    activate(version=tiny_model, domain=other, user=None)
    pointer = ActiveModel.objects.get(domain=other)

    response = admin_client.post(  # only admins may point a domain at any version by hand
        reverse("admin:models_app_activemodel_change", args=[pointer.pk]), {"version": job.candidate_id}
    )

    assert response.status_code == 200 and "fine-tuned on" in response.content.decode()
    assert active_version_for(domain_id=other.pk) == tiny_model


def test_a_refused_start_is_a_message_and_reviewers_never_reach_the_admin(
    client, staff_manager, reviewer, domain, tiny_model
):
    client.force_login(staff_manager)
    response = action(client, "annotations_domain", "start_finetune", [domain.pk])
    assert response.status_code == 200
    assert any("no corrections to train on" in text for text in texts(response))

    client.force_login(reviewer)
    assert client.get(reverse("admin:models_app_finetunejob_changelist")).status_code == 302


def test_the_report_says_which_examples_each_version_was_shown():
    side = {"edit_distance": 0.5, "chrf": 0.6, "served_edit_distance": 0.1, "replay_loss": 1.0}
    job = FineTuneJob(
        evaluation={
            "active": {"version": "base", **side},
            "candidate": {"version": "ft-1", **side},
            "retrieval_floor": {"active": 0.0, "candidate": 0.2},
            "heldout_items": 12,
            "replay_items": 3,
            "promote": False,
            "reasons": ["<b>not</b> better"],
        }
    )

    html = str(FineTuneJobAdmin(FineTuneJob, site).evaluation_report(job))

    assert "<td>base</td><td>the k nearest</td>" in html
    assert "<td>ft-1</td><td>those ≥ 0.20 near</td>" in html
    assert "&lt;b&gt;not&lt;/b&gt; better" in html  # reasons are text
