from django.conf import settings
from django.db import models


class ModelVersion(models.Model):
    """A base model plus, optionally, a LoRA adapter (PRODUCT.md §4).

    `status` is the version's life: training → candidate → active → retired
    (or failed). Which version serves a domain is ActiveModel's business: one
    row per domain, so a promotion is one UPDATE and "one active version per
    domain" is a database constraint.
    """

    class Status(models.TextChoices):
        TRAINING = "training"
        CANDIDATE = "candidate"
        ACTIVE = "active"
        RETIRED = "retired"
        FAILED = "failed"

    name = models.CharField(max_length=200, unique=True)
    base_model = models.CharField(max_length=500, help_text="Local Hugging Face model folder.")
    adapter_path = models.CharField(max_length=500, blank=True, help_text="LoRA adapter folder (peft); empty: none.")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CANDIDATE, db_index=True)
    metrics = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    promoted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name


class ActiveModel(models.Model):
    """The version that writes a domain's drafts: the per-domain active pointer."""

    domain = models.OneToOneField("annotations.Domain", on_delete=models.CASCADE, related_name="active_model")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="active_for")
    changed_at = models.DateTimeField(auto_now=True)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = "active model"

    def __str__(self) -> str:
        return f"{self.domain}: {self.version}"
