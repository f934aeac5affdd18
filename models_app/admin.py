from django.contrib import admin

from .models import ActiveModel, ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    """Versions are what wrote drafts: their weights and status change only through the services (audited)."""

    list_display = ["name", "status", "base_model", "adapter_path", "parent", "created_at", "promoted_at"]
    list_filter = ["status"]
    search_fields = ["name", "base_model"]
    readonly_fields = [
        "base_model",
        "adapter_path",
        "parent",
        "status",
        "created_at",
        "created_by",
        "promoted_at",
        "promoted_by",
    ]

    def has_add_permission(self, request):
        return False  # `manage.py prepare_model` registers base models; fine-tuning registers the rest


@admin.register(ActiveModel)
class ActiveModelAdmin(admin.ModelAdmin):
    """Which version writes each domain's drafts. Saving goes through models_app.services.activate (audited)."""

    list_display = ["domain", "version", "changed_at", "changed_by"]
    list_select_related = ["domain", "version", "changed_by"]
    readonly_fields = ["changed_at", "changed_by"]

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "domain"] if obj else self.readonly_fields

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "version":
            kwargs["queryset"] = ModelVersion.objects.filter(
                status__in=[ModelVersion.Status.CANDIDATE, ModelVersion.Status.ACTIVE, ModelVersion.Status.RETIRED]
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_delete_permission(self, request, obj=None):
        return False  # a domain without an active model cannot get drafts

    def save_model(self, request, obj, form, change):
        from .services import activate

        activate(version=obj.version, domain=obj.domain, user=request.user)
        obj.pk = ActiveModel.objects.get(domain=obj.domain).pk  # the admin's "saved" message links to it
