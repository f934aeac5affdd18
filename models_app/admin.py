from django.contrib import admin

from .models import ActiveModel, ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "base_model", "adapter_path", "parent", "created_at", "promoted_at"]
    list_filter = ["status"]
    search_fields = ["name", "base_model"]
    readonly_fields = ["created_at", "created_by", "promoted_at", "promoted_by"]
    raw_id_fields = ["parent"]


@admin.register(ActiveModel)
class ActiveModelAdmin(admin.ModelAdmin):
    """Which version writes each domain's drafts. Changing it goes through models_app.services.activate (audited)."""

    list_display = ["domain", "version", "changed_at", "changed_by"]
    list_select_related = ["domain", "version", "changed_by"]
    readonly_fields = ["domain", "changed_at", "changed_by"]

    def has_add_permission(self, request):
        return False  # prepare_model creates the pointers; a domain without one has no model to point at yet

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        from .services import activate

        activate(version=obj.version, domain=obj.domain, user=request.user)
