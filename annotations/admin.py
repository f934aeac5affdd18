"""Admin for managers and admins: find work, see who did what, read corrections and the audit trail."""

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from . import roles
from .exceptions import SoraError
from .models import AuditEvent, Claim, Correction, Domain, Generation, Item, Review


def render_diff(ops: list) -> str:
    """Word diff as escaped HTML: deletions struck through in red, insertions underlined in green."""
    styles = {
        "equal": "",
        "delete": "background:#fde2e1;color:#8a1c12;text-decoration:line-through",
        "insert": "background:#dcf5dc;color:#135c13;text-decoration:underline",
    }
    spans = format_html_join("", '<span style="{}">{}</span>', ((styles.get(op, ""), text) for op, text in ops))
    return format_html('<div style="white-space:pre-wrap;max-width:60em">{}</div>', spans)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Immutable records: visible to staff, never editable through the admin."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Domain)
class DomainAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "approvals_required", "redact_identifiers", "finetune_threshold", "is_active"]
    list_filter = ["is_active", "redact_identifiers", "approvals_required"]
    search_fields = ["slug", "name"]
    filter_horizontal = ["reviewers"]
    readonly_fields = ["created_at"]
    actions = ["start_finetune"]

    @admin.action(description="Start a fine-tune job on the approved examples so far", permissions=["finetune"])
    def start_finetune(self, request, queryset):
        from models_app.finetuning import finetune_job_start

        for domain in queryset:
            try:
                job = finetune_job_start(domain=domain, user=request.user)
            except SoraError as exc:
                messages.error(request, f"{domain.slug}: {exc.message}")
            else:
                url = reverse("admin:models_app_finetunejob_change", args=[job.pk])
                messages.success(
                    request, format_html('{}: <a href="{}">fine-tune job {}</a> queued.', domain.slug, url, job.pk)
                )

    def has_finetune_permission(self, request) -> bool:
        return roles.is_manager(request.user)


class GenerationInline(admin.TabularInline):
    model = Generation
    extra = 0
    fields = ["source", "status", "model_version", "text", "created_at"]
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


class ReviewInline(admin.TabularInline):
    model = Review
    extra = 0
    fields = ["reviewer", "decision", "reason", "scores", "time_spent_ms", "created_at"]
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["id", "domain", "status", "priority", "external_id", "approvals", "lease_owner", "created_at"]
    list_filter = ["status", "domain", "created_at"]
    search_fields = ["=id", "external_id", "input"]
    list_select_related = ["domain", "lease_owner"]
    # Read-only: items change through the API's services, which check leases and
    # versions and write the audit trail; an admin edit would bypass all three.
    readonly_fields = [field.name for field in Item._meta.fields]
    inlines = [GenerationInline, ReviewInline]
    show_full_result_count = False  # COUNT(*) over a million items on every page is not worth it
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Generation)
class GenerationAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "source", "status", "model_version", "created_at"]
    list_filter = ["source", "status", "model_version"]
    search_fields = ["=item__id", "text"]
    list_select_related = ["item", "model_version"]


@admin.register(Claim)
class ClaimAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "reviewer", "claimed_at", "lease_expires_at", "ended_at", "end_reason"]
    list_filter = ["end_reason", "claimed_at"]
    search_fields = ["=item__id", "reviewer__username"]
    list_select_related = ["item", "reviewer"]


@admin.register(Review)
class ReviewAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "reviewer", "decision", "time_spent_ms", "created_at"]
    list_filter = ["decision", "item__domain", "created_at"]
    search_fields = ["=item__id", "reviewer__username", "reason", "final_text"]
    list_select_related = ["item", "reviewer"]


@admin.register(Correction)
class CorrectionAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "domain", "edited", "edit_distance", "reviewer", "created_at"]
    list_filter = ["domain", "edited", "created_at"]
    search_fields = ["=item__id", "final", "review__reviewer__username"]
    list_select_related = ["item", "domain", "review__reviewer"]
    fields = ["item", "review", "domain", "generation", "edited", "edit_distance", "diff_view", "draft", "final"]
    readonly_fields = fields

    @admin.display(description="Reviewer", ordering="review__reviewer__username")
    def reviewer(self, obj: Correction) -> str:
        return obj.review.reviewer.username

    @admin.display(description="Diff (draft → final)")
    def diff_view(self, obj: Correction) -> str:
        return render_diff(obj.diff)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor", "verb", "target_type", "target_id"]
    list_filter = ["verb", "target_type", "created_at"]
    search_fields = ["target_id", "actor__username", "verb"]
    list_select_related = ["actor"]
    date_hierarchy = "created_at"
    show_full_result_count = False
