"""Sign-ins and sign-outs go to the audit log (PRODUCT.md §1: admins read it). Thin: the audit service writes."""

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from .services.audit import auth_event_record


@receiver(user_logged_in, dispatch_uid="audit_login")
def _logged_in(sender, request, user, **kwargs) -> None:
    auth_event_record(verb="auth.login", user=user, username=user.get_username(), request=request)


@receiver(user_logged_out, dispatch_uid="audit_logout")
def _logged_out(sender, request, user, **kwargs) -> None:
    if user is not None:
        auth_event_record(verb="auth.logout", user=user, username=user.get_username(), request=request)


@receiver(user_login_failed, dispatch_uid="audit_login_failed")
def _login_failed(sender, credentials, request=None, **kwargs) -> None:
    # `credentials` has the password masked by Django; only the name tried is kept.
    auth_event_record(
        verb="auth.login_failed", user=None, username=str(credentials.get("username", "")), request=request
    )
