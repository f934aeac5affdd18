"""Admin for webhooks: endpoints (subscribe, send test, rotate the secret, turn back on) and the delivery log
(every attempt, redeliver). Changes go through webhooks.services, which check the URL and audit."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from annotations.admin import ReadOnlyAdmin
from annotations.exceptions import InvalidInput, SoraError

from . import selectors, services
from .models import SUBSCRIBABLE, Delivery, DeliveryAttempt, Endpoint

RECENT_DELIVERIES = 20


class EndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")
    events = forms.MultipleChoiceField(
        choices=[(str(e), str(e)) for e in SUBSCRIBABLE], widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = Endpoint
        fields = ["url", "events", "domains", "description", "is_active"]

    def clean(self):
        cleaned = super().clean()
        try:
            services.endpoint_values_check(
                url=cleaned.get("url"),
                events=cleaned.get("events"),
                domains=[d.slug for d in cleaned["domains"]] if cleaned.get("domains") is not None else None,
            )
        except InvalidInput as exc:
            raise ValidationError(exc.extra["errors"]) from None
        return cleaned


def _disabled_warning(request) -> None:
    """Tell whoever opens the webhook pages which endpoints were switched off for failing. Only on a GET: an
    action's POST redirects to a GET, which would show the warning a second time."""
    if request.method != "GET":
        return
    for endpoint in Endpoint.objects.filter(is_active=False, disabled_at__isnull=False):
        messages.warning(
            request,
            f"Endpoint {endpoint.url} was disabled on {endpoint.disabled_at:%Y-%m-%d %H:%M} UTC: "
            f"{endpoint.disabled_reason} Turn it back on when it answers again; its pending deliveries then go out.",
        )


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = ["url", "event_list", "is_active", "failing_since", "description", "created_at"]
    list_filter = ["is_active"]
    actions = ["send_test", "rotate_secret", "turn_on"]
    readonly_fields = ["secret", "previous_secret_expires_at", "failing_since", "disabled_at", "disabled_reason"]
    readonly_fields += ["recent_deliveries"]

    def get_fields(self, request, obj=None):
        fields = ["url", "events", "domains", "description", "is_active"]
        return fields + self.readonly_fields if obj else fields

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    @admin.display(description="events")
    def event_list(self, endpoint: Endpoint) -> str:
        return ", ".join(endpoint.events)

    @admin.display(description=f"latest {RECENT_DELIVERIES} deliveries")
    def recent_deliveries(self, endpoint: Endpoint):
        rows = endpoint.deliveries.order_by("-created_at", "-id")[:RECENT_DELIVERIES]
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                '<li><a href="{}">{}</a> {}: {} ({} attempts, last status {})</li>',
                (
                    (
                        reverse("admin:webhooks_delivery_change", args=[d.pk]),
                        d.message_id,
                        d.event_type,
                        d.status,
                        d.attempts,
                        d.last_status_code or "–",
                    )
                    for d in rows
                ),
            ),
        )

    def changelist_view(self, request, extra_context=None):
        _disabled_warning(request)
        return super().changelist_view(request, extra_context)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        values = {
            "url": data["url"],
            "events": data["events"],
            "domains": [d.slug for d in data["domains"]],
            "description": data.get("description", ""),
        }
        if change:
            # The form has already written its values onto `obj`: the service gets the stored row, so the audit
            # records what it was; is_active only when it changed (turning on clears the failure record).
            if "is_active" in form.changed_data:
                values["is_active"] = data["is_active"]
            stored = selectors.endpoint_get(endpoint_id=obj.pk)
            services.endpoint_update(endpoint=stored, user=request.user, **values)
        else:
            created = services.endpoint_create(user=request.user, **values)
            obj.pk = created.pk
            messages.info(request, "Give the receiver the signing secret shown on this endpoint's page.")

    def save_related(self, request, form, formsets, change):
        pass  # the service above saved the domains

    def delete_model(self, request, obj):
        services.endpoint_delete(endpoint=obj, user=request.user)

    def delete_queryset(self, request, queryset):
        for endpoint in queryset:  # "Delete selected": through the service too, so each deletion is audited
            services.endpoint_delete(endpoint=endpoint, user=request.user)

    def _each(self, request, queryset, success: str, service) -> None:
        for endpoint in queryset:
            try:
                service(endpoint)
            except SoraError as exc:
                messages.error(request, f"{endpoint.url}: {exc.message}")
            else:
                messages.success(request, success.format(url=endpoint.url))

    @admin.action(description="Send test (a ping event)", permissions=["change"])
    def send_test(self, request, queryset):
        self._each(
            request,
            queryset,
            "Ping queued for {url}; see its deliveries.",
            lambda e: services.endpoint_ping(endpoint=e, user=request.user),
        )

    @admin.action(description="Rotate the signing secret (the old one signs too for a while)", permissions=["change"])
    def rotate_secret(self, request, queryset):
        self._each(
            request,
            queryset,
            "New secret for {url}; the old one keeps signing until the time shown.",
            lambda e: services.endpoint_secret_rotate(endpoint=e, user=request.user),
        )

    @admin.action(description="Turn on (pending deliveries go out)", permissions=["change"])
    def turn_on(self, request, queryset):
        self._each(
            request,
            queryset,
            "{url} is on.",
            lambda e: services.endpoint_update(endpoint=e, user=request.user, is_active=True),
        )


class AttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    fields = ["number", "started_at", "status_code", "latency_ms", "error", "response_body"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    """The delivery log: one row per event and endpoint, with every attempt."""

    list_display = ["message_id", "event_type", "endpoint", "status", "attempts", "last_status_code", "created_at"]
    list_filter = ["status", "event_type", "endpoint"]
    list_select_related = ["endpoint"]
    search_fields = ["message_id"]
    fields = ["endpoint", "event_type", "message_id", "status", "attempts", "next_attempt_at", "last_status_code"]
    fields += ["delivered_at", "created_at", "body"]
    readonly_fields = fields
    inlines = [AttemptInline]
    actions = ["redeliver"]

    def changelist_view(self, request, extra_context=None):
        _disabled_warning(request)
        return super().changelist_view(request, extra_context)

    def has_redeliver_permission(self, request) -> bool:
        return request.user.has_perm("webhooks.change_endpoint")

    @admin.action(description="Redeliver now (same webhook-id)", permissions=["redeliver"])
    def redeliver(self, request, queryset):
        for delivery in queryset:
            try:
                services.delivery_redeliver(delivery_id=delivery.pk, user=request.user)
            except SoraError as exc:
                messages.error(request, f"{delivery.message_id}: {exc.message}")
            else:
                messages.success(request, f"{delivery.message_id} queued again.")
