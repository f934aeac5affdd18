from django.conf import settings
from django.db import models


class ModelVersion(models.Model):
    """A base model plus, optionally, a LoRA adapter (PRODUCT.md §4).

    Minimal for now: generations point at it; training, activation per domain
    and promotion come with the model runtime and fine-tuning loop.
    """

    class Status(models.TextChoices):
        TRAINING = "training"
        CANDIDATE = "candidate"
        ACTIVE = "active"
        RETIRED = "retired"
        FAILED = "failed"

    name = models.CharField(max_length=200, unique=True)
    base_model = models.CharField(max_length=500, help_text="Local Hugging Face folder or model name.")
    adapter_path = models.CharField(max_length=500, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CANDIDATE, db_index=True)
    metrics = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name
