from django.contrib import admin

from .models import ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "base_model", "adapter_path", "parent", "created_at"]
    list_filter = ["status"]
    search_fields = ["name", "base_model"]
    readonly_fields = ["created_at"]
    raw_id_fields = ["parent", "created_by"]
