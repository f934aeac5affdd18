"""Changes to who may do what are audited with their author: roles, account flags and passwords, permissions,
a domain's reviewers and settings, API tokens. Driven through the Django admin, where managers make them."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from annotations import roles
from annotations.models import AuditEvent
from tests.factories import UserFactory


def events(verb, target, *, since=0):
    return list(AuditEvent.objects.filter(verb=verb, target_id=str(target.pk), id__gt=since).order_by("id"))


def last_event_id() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def user_form(user, **changes) -> dict:
    """What the admin's user change form posts for `user`, with `changes` applied."""
    joined = timezone.localtime(user.date_joined)
    data = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": user.is_active,
        "is_staff": user.is_staff,
        "is_superuser": user.is_superuser,
        "groups": [group.pk for group in user.groups.all()],
        "user_permissions": [],
        "date_joined_0": joined.strftime("%Y-%m-%d"),
        "date_joined_1": joined.strftime("%H:%M:%S"),
        "last_login_0": "",
        "last_login_1": "",
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not False}  # an unticked box is not posted


@pytest.fixture
def signed_in_admin(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.mark.django_db
def test_granting_and_taking_a_role_in_the_admin_is_audited_with_its_author(signed_in_admin, admin_user):
    rita = UserFactory(username="rita", roles=[roles.REVIEWER])
    manager_group = Group.objects.get(name=roles.MODEL_MANAGER)
    url = reverse("admin:auth_user_change", args=[rita.pk])
    reviewer_group = Group.objects.get(name=roles.REVIEWER)
    since = last_event_id()  # the factory's own grant of the reviewer role is audited too

    response = signed_in_admin.post(url, user_form(rita, groups=[reviewer_group.pk, manager_group.pk]))
    assert response.status_code == 302, response.context["adminform"].form.errors
    signed_in_admin.post(url, user_form(rita, groups=[manager_group.pk]))

    granted, taken = events("user.roles_changed", rita, since=since)
    assert (granted.actor, granted.after, granted.before) == (admin_user, {"added": [roles.MODEL_MANAGER]}, {})
    assert (taken.actor, taken.before, taken.after) == (admin_user, {"removed": [roles.REVIEWER]}, {})


@pytest.mark.django_db
def test_making_someone_a_superuser_or_locking_them_out_is_audited(signed_in_admin, admin_user):
    rita = UserFactory(username="rita")
    url = reverse("admin:auth_user_change", args=[rita.pk])

    signed_in_admin.post(url, user_form(rita, is_staff=True, is_superuser=True))
    rita.refresh_from_db()
    signed_in_admin.post(url, user_form(rita, is_active=False))

    promoted, locked = events("user.access_changed", rita)
    assert promoted.actor == admin_user
    assert (promoted.before, promoted.after) == (
        {"is_staff": False, "is_superuser": False},
        {"is_staff": True, "is_superuser": True},
    )
    assert (locked.before, locked.after) == ({"is_active": True}, {"is_active": False})


@pytest.mark.django_db
def test_a_password_set_by_an_admin_is_audited_without_the_hash(signed_in_admin, admin_user):
    rita = UserFactory(username="rita")
    url = reverse("admin:auth_user_password_change", args=[rita.pk])
    new = "another horse battery staple"

    response = signed_in_admin.post(url, {"password1": new, "password2": new, "usable_password": "true"})

    assert response.status_code == 302
    [changed] = events("user.password_changed", rita)
    assert changed.actor == admin_user and changed.before == {} and changed.after == {}


@pytest.mark.django_db
def test_signing_in_writes_no_account_change(client):
    rita = UserFactory(username="rita")
    rita.set_password("correct horse battery staple")
    rita.save()
    before = AuditEvent.objects.filter(verb__startswith="user.").count()

    client.post(reverse("login"), {"username": "rita", "password": "correct horse battery staple"})

    assert AuditEvent.objects.filter(verb="auth.login").count() == 1
    assert AuditEvent.objects.filter(verb__startswith="user.").count() == before  # last_login is not a change


@pytest.mark.django_db
def test_adding_users_to_a_role_from_the_group_side_gives_each_account_an_event():
    rita, sam = UserFactory(username="rita"), UserFactory(username="sam")
    group = Group.objects.get(name=roles.MODEL_MANAGER)

    group.user_set.add(rita, sam)
    rita.groups.clear()

    assert [e.after for e in events("user.roles_changed", sam)] == [{"added": [roles.MODEL_MANAGER]}]
    added, cleared = events("user.roles_changed", rita)
    assert added.actor is None  # no request: a shell or a command
    assert cleared.before == {"removed": [roles.MODEL_MANAGER]}


@pytest.mark.django_db
def test_permission_changes_of_users_and_roles_are_audited():
    rita = UserFactory(username="rita")
    permission = Permission.objects.get(codename="change_domain")
    group = Group.objects.get(name=roles.REVIEWER)

    rita.user_permissions.add(permission)
    group.permissions.add(permission)

    [user_event] = events("user.permissions_changed", rita)
    [group_event] = events("group.permissions_changed", group)
    assert user_event.after == group_event.after == {"added": [str(permission)]}


@pytest.mark.django_db
def test_a_domains_reviewers_and_settings_changed_in_the_admin_are_audited(signed_in_admin, admin_user, domain):
    rita = UserFactory(username="rita", roles=[roles.REVIEWER])
    url = reverse("admin:annotations_domain_change", args=[domain.pk])
    form = signed_in_admin.get(url).context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update(
        reviewers=[rita.pk],
        redact_identifiers="on",
        sampling='{"temperature": 0}',
        rubric="[]",
    )

    response = signed_in_admin.post(url, data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    [reviewers] = events("domain.reviewers_changed", domain)
    assert (reviewers.actor, reviewers.after) == (admin_user, {"added": ["rita"]})
    [changed] = events("domain.changed", domain)
    assert changed.actor == admin_user
    assert changed.before["redact_identifiers"] is False and changed.after["redact_identifiers"] is True
    assert "prompt_template" not in changed.after  # only what changed


@pytest.mark.django_db
def test_api_tokens_created_and_revoked_in_the_admin_are_audited(signed_in_admin, admin_user):
    rita = UserFactory(username="rita", roles=[roles.INTEGRATION])
    since = last_event_id()

    response = signed_in_admin.post(reverse("admin:authtoken_tokenproxy_add"), {"user": rita.pk})
    assert response.status_code == 302
    token = Token.objects.get(user=rita)
    signed_in_admin.post(reverse("admin:authtoken_tokenproxy_delete", args=[rita.pk]), {"post": "yes"})

    assert not Token.objects.filter(pk=token.pk).exists()
    [created] = events("auth.token_created", rita, since=since)
    [revoked] = events("auth.token_revoked", rita, since=since)
    assert created.actor == revoked.actor == admin_user
    assert token.key not in str(created.after) + str(revoked.after)


@pytest.mark.django_db
def test_an_admin_deleting_their_own_account_is_audited_without_an_actor(client):
    ada = UserFactory(username="ada", is_staff=True, is_superuser=True)
    Token.objects.create(user=ada)
    client.force_login(ada)

    response = client.post(reverse("admin:auth_user_delete", args=[ada.pk]), {"post": "yes"})

    assert response.status_code == 302
    [deleted] = AuditEvent.objects.filter(verb="user.deleted", target_id=str(ada.pk))
    assert deleted.actor is None and deleted.before == {"username": "ada"}
    assert AuditEvent.objects.filter(verb="auth.token_revoked", target_id=str(ada.pk)).exists()


@pytest.mark.django_db
def test_a_stronger_hash_of_the_same_password_at_sign_in_is_not_a_password_change(client, settings):
    rita = UserFactory(username="rita")
    rita.set_password("correct horse battery staple")
    rita.save()
    since = last_event_id()
    # A newer hasher first: signing in re-hashes the password with it, as after a Django upgrade.
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        *settings.PASSWORD_HASHERS,
    ]

    client.post(reverse("login"), {"username": "rita", "password": "correct horse battery staple"})

    rita.refresh_from_db()
    assert rita.password.startswith("pbkdf2_sha256$")
    assert not events("user.password_changed", rita, since=since)


@pytest.mark.django_db
def test_domains_given_from_the_users_side_are_audited_on_each_domain(domain):
    other = domain.__class__.objects.get(slug="customer_service")
    rita = UserFactory(username="rita", roles=[roles.REVIEWER])

    rita.review_domains.add(domain, other)
    rita.review_domains.clear()

    for each in (domain, other):
        added, removed = events("domain.reviewers_changed", each)
        assert (added.after, removed.before) == ({"added": ["rita"]}, {"removed": ["rita"]})


@pytest.mark.django_db
def test_deleting_a_role_names_everyone_who_had_it():
    group = Group.objects.create(name="auditors")
    group.user_set.add(UserFactory(username="rita"), UserFactory(username="sam"))

    group.delete()

    [deleted] = AuditEvent.objects.filter(verb="group.deleted")
    assert deleted.before == {"name": "auditors", "members": ["rita", "sam"]}
