"""Sign-ins and sign-outs go to the audit log (PRODUCT.md §1: admins read it) and failures to the sign-in
throttle (sora_web/throttling.py); so do changes to who may do what: roles, account flags and passwords,
permissions, a domain's reviewers and settings, API tokens. Thin: the audit service and the throttle do the work."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver
from rest_framework.authtoken.models import Token, TokenProxy

from sora_web.throttling import login_failure_record, login_success_record

from .models import Domain
from .services.audit import access_change_record, auth_event_record


@receiver(user_logged_in, dispatch_uid="audit_login")
def _logged_in(sender, request, user, **kwargs) -> None:
    auth_event_record(verb="auth.login", user=user, username=user.get_username(), request=request)
    if request is not None:
        login_success_record(user.get_username(), request)


@receiver(user_logged_out, dispatch_uid="audit_logout")
def _logged_out(sender, request, user, **kwargs) -> None:
    if user is not None:
        auth_event_record(verb="auth.logout", user=user, username=user.get_username(), request=request)


@receiver(user_login_failed, dispatch_uid="audit_login_failed")
def _login_failed(sender, credentials, request=None, **kwargs) -> None:
    # `credentials` has the password masked by Django; only the name tried is kept.
    username = str(credentials.get("username", ""))
    auth_event_record(verb="auth.login_failed", user=None, username=username, request=request)
    if request is not None:
        login_failure_record(username, request)


# --- Changes to who may do what ------------------------------------------------------------------------------
# Made in the admin (or a shell) by plain saves; the audit names the signed-in user as the actor.

User = get_user_model()
_ACCOUNT_FLAGS = ("is_active", "is_staff", "is_superuser")


@receiver(pre_save, sender=User, dispatch_uid="audit_account_before")
def _account_before(sender, instance, update_fields=None, raw=False, **kwargs) -> None:
    watched = {*_ACCOUNT_FLAGS, "password"}
    if raw or instance.pk is None or (update_fields is not None and not watched & set(update_fields)):
        return  # e.g. the last_login update at every sign-in: no extra query
    instance._audit_before = User.objects.filter(pk=instance.pk).values(*watched).first()


@receiver(post_save, sender=User, dispatch_uid="audit_account_after")
def _account_after(sender, instance, created, raw=False, **kwargs) -> None:
    if raw:
        return
    flags = {flag: getattr(instance, flag) for flag in _ACCOUNT_FLAGS}
    if created:
        access_change_record(verb="user.created", target=instance, before={}, after=flags)
        return
    before = getattr(instance, "_audit_before", None)
    instance._audit_before = None
    if before is None:
        return
    changed = {flag for flag in _ACCOUNT_FLAGS if before[flag] != flags[flag]}
    if changed:
        access_change_record(
            verb="user.access_changed",
            target=instance,
            before={flag: before[flag] for flag in changed},
            after={flag: flags[flag] for flag in changed},
        )
    # Set by set_password(); a sign-in that only re-hashes the same password with stronger settings leaves it unset.
    if before["password"] != instance.password and getattr(instance, "_password", None) is not None:
        access_change_record(verb="user.password_changed", target=instance, before={}, after={})  # never the hash


@receiver(post_delete, sender=User, dispatch_uid="audit_account_deleted")
def _account_deleted(sender, instance, **kwargs) -> None:
    access_change_record(
        verb="user.deleted", target=instance, before={"username": instance.get_username()}, after={},
        gone_user_id=instance.pk,
    )  # fmt: skip


def _names(model, pks) -> list[str]:
    return sorted(str(obj) for obj in model.objects.filter(pk__in=pks))


def _grant_audit(*, verb: str, instance, action: str, reverse: bool, model, pk_set, accessors: tuple[str, str]):
    """One audit event per change of a many-to-many relation that grants something (roles, permissions, domains to
    review), always on the forward side's object (the user, the group, the domain) whichever side was changed:
    `group.user_set.add(rita)` is an event on rita. `clear` is read before it happens: afterwards there is
    nothing left to name. `accessors`: the relation's names on the forward and on the reverse side."""
    if action == "pre_clear":
        instance._audit_cleared = set(getattr(instance, accessors[reverse]).values_list("pk", flat=True))
        return
    if action == "post_clear":
        pk_set, action = getattr(instance, "_audit_cleared", set()), "post_remove"
    if action not in ("post_add", "post_remove") or not pk_set:
        return
    if reverse:
        changes = [(target, [str(instance)]) for target in model.objects.filter(pk__in=pk_set)]
    else:
        changes = [(instance, _names(model, pk_set))]
    for target, names in changes:
        if action == "post_add":
            access_change_record(verb=verb, target=target, before={}, after={"added": names})
        else:
            access_change_record(verb=verb, target=target, before={"removed": names}, after={})


@receiver(m2m_changed, sender=User.groups.through, dispatch_uid="audit_roles")
def _roles_changed(sender, **kwargs) -> None:
    _grant_audit(verb="user.roles_changed", accessors=("groups", "user_set"), **_m2m(kwargs))


@receiver(m2m_changed, sender=User.user_permissions.through, dispatch_uid="audit_user_permissions")
def _user_permissions_changed(sender, **kwargs) -> None:
    _grant_audit(verb="user.permissions_changed", accessors=("user_permissions", "user_set"), **_m2m(kwargs))


@receiver(m2m_changed, sender=Group.permissions.through, dispatch_uid="audit_group_permissions")
def _group_permissions_changed(sender, **kwargs) -> None:
    _grant_audit(verb="group.permissions_changed", accessors=("permissions", "group_set"), **_m2m(kwargs))


@receiver(m2m_changed, sender=Domain.reviewers.through, dispatch_uid="audit_domain_reviewers")
def _domain_reviewers_changed(sender, **kwargs) -> None:
    _grant_audit(verb="domain.reviewers_changed", accessors=("reviewers", "review_domains"), **_m2m(kwargs))


def _m2m(kwargs: dict) -> dict:
    return {name: kwargs[name] for name in ("instance", "action", "reverse", "model", "pk_set")}


@receiver(pre_delete, sender=Group, dispatch_uid="audit_role_deleted")
def _role_deleted(sender, instance, **kwargs) -> None:
    # Deleting a group drops its memberships without an m2m signal: name who lost it here.
    members = sorted(str(user) for user in instance.user_set.all())
    access_change_record(
        verb="group.deleted", target=instance, before={"name": instance.name, "members": members}, after={}
    )


_DOMAIN_SETTINGS = [f.name for f in Domain._meta.concrete_fields if f.name not in ("id", "created_at")]


@receiver(pre_save, sender=Domain, dispatch_uid="audit_domain_before")
def _domain_before(sender, instance, raw=False, **kwargs) -> None:
    if not raw and instance.pk is not None:
        instance._audit_before = Domain.objects.filter(pk=instance.pk).values(*_DOMAIN_SETTINGS).first()


@receiver(post_save, sender=Domain, dispatch_uid="audit_domain_after")
def _domain_after(sender, instance, created, raw=False, **kwargs) -> None:
    if raw:
        return
    now = {name: getattr(instance, name) for name in _DOMAIN_SETTINGS}
    before = {} if created else (getattr(instance, "_audit_before", None) or {})
    instance._audit_before = None
    changed = [name for name in _DOMAIN_SETTINGS if created or (before and before[name] != now[name])]
    if changed:
        access_change_record(
            verb="domain.created" if created else "domain.changed",
            target=instance,
            before={name: before[name] for name in changed if name in before},
            after={name: now[name] for name in changed},
        )


# The admin edits tokens through DRF's proxy model, whose signals name the proxy as their sender.
@receiver(post_save, sender=Token, dispatch_uid="audit_token_created")
@receiver(post_save, sender=TokenProxy, dispatch_uid="audit_token_proxy_created")
def _token_created(sender, instance, created, raw=False, **kwargs) -> None:
    if created and not raw:
        access_change_record(verb="auth.token_created", target=instance.user, before={}, after={})


@receiver(post_delete, sender=Token, dispatch_uid="audit_token_revoked")
@receiver(post_delete, sender=TokenProxy, dispatch_uid="audit_token_proxy_revoked")
def _token_revoked(sender, instance, **kwargs) -> None:
    # Also when its user is deleted (cascade), maybe by that very user.
    access_change_record(
        verb="auth.token_revoked", target=instance.user, before={}, after={}, gone_user_id=instance.user_id
    )
