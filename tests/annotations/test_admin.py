import pytest
from django.urls import reverse

from annotations import services
from annotations.models import AuditEvent, Claim, Correction, Domain, Generation, Item, Review
from models_app.models import ModelVersion


@pytest.fixture
def reviewed_item(reviewer, item):
    claimed = services.item_claim_next(reviewer=reviewer)
    services.review_submit(
        item_id=item.pk,
        reviewer=reviewer,
        decision="approve",
        version=claimed.version,
        final_text="Hello, <b>your</b> parcel left today.",
    )
    return item


@pytest.mark.parametrize("model", [Domain, Item, Generation, Claim, Review, Correction, AuditEvent, ModelVersion])
def test_every_model_has_a_working_changelist_and_search(client, admin_user, reviewed_item, model):
    client.force_login(admin_user)
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")

    assert client.get(url).status_code == 200
    assert client.get(url, {"q": "parcel"}).status_code == 200


def test_correction_page_shows_the_diff_escaped_and_read_only(client, admin_user, reviewed_item):
    client.force_login(admin_user)
    correction = Correction.objects.get(item=reviewed_item)

    page = client.get(reverse("admin:annotations_correction_change", args=[correction.pk])).content.decode()

    assert "line-through" in page and "underline" in page
    assert "&lt;b&gt;your&lt;/b&gt;" in page, "model and reviewer text must be escaped"
    assert "<b>your</b>" not in page
    assert 'name="_save"' not in page, "corrections are read-only"


def test_audit_events_cannot_be_edited_or_deleted_in_the_admin(client, admin_user, reviewed_item):
    client.force_login(admin_user)
    event = AuditEvent.objects.filter(target_id=str(reviewed_item.pk)).first()

    response = client.post(reverse("admin:annotations_auditevent_delete", args=[event.pk]), {"post": "yes"})

    assert response.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_items_are_read_only_in_the_admin(client, admin_user, item):
    client.force_login(admin_user)

    page = client.get(reverse("admin:annotations_item_change", args=[item.pk])).content.decode()
    client.post(reverse("admin:annotations_item_change", args=[item.pk]), {"draft": "edited behind the API"})

    assert 'name="draft"' not in page
    item.refresh_from_db()
    assert item.draft != "edited behind the API"


def test_a_model_manager_can_read_the_review_records_in_the_admin(client, manager, reviewed_item):
    manager.is_staff = True
    manager.save()
    client.force_login(manager)

    for model in [Item, Review, Correction, AuditEvent, ModelVersion]:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        assert client.get(url).status_code == 200, model
