"""Sign-in forms that refuse early while sora_web.throttling holds a name or an address back."""

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from .throttling import login_wait_seconds, wait_message


class _ThrottledSignInMixin:
    def clean(self):
        username = self.cleaned_data.get("username") or ""
        if self.request is not None and (wait := login_wait_seconds(username, self.request)):
            # Refused before the password is checked, so guesses during the wait teach nothing.
            raise forms.ValidationError(wait_message(wait), code="throttled")
        return super().clean()


class SignInForm(_ThrottledSignInMixin, AuthenticationForm):
    pass


class AdminSignInForm(_ThrottledSignInMixin, AdminAuthenticationForm):
    pass
