from django.conf import settings
from django.db import models

from annotations.models import ImmutableModel

from .inference.base import ModelRef


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

    def model_ref(self) -> ModelRef:
        """What a backend loads for this version (the key changes if the weights it names change)."""
        return ModelRef(
            key=f"{self.pk}:{self.base_model}:{self.adapter_path}",
            base_model=self.base_model,
            adapter_path=self.adapter_path,
            name=self.name,
        )


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


class TrainingExample(ImmutableModel):
    """One approved item as training data: the prompt the model saw and the text people approved.

    Written when the item is approved (in the same transaction), redacted first when the domain
    says so, and never changed afterwards: a dataset snapshot names examples by id and hash.
    `origin` says what the approval taught (datasets.py: the weights, and what each is used for).
    """

    class Origin(models.TextChoices):
        CORRECTED = "corrected", "a reviewer changed the draft"
        WRITTEN = "written", "approved as written by a person (a submitted draft)"
        ACCEPTED = "accepted", "the model's own draft approved unchanged"

    domain = models.ForeignKey("annotations.Domain", on_delete=models.PROTECT, related_name="training_examples")
    # PROTECT: a snapshot names its examples; an item that trained a model is not deleted under it.
    item = models.OneToOneField("annotations.Item", on_delete=models.PROTECT, related_name="training_example")
    messages = models.JSONField(help_text='The prompt as chat messages: [{"role": "system"|"user", "content"}, …].')
    completion = models.TextField(help_text="The approved text: what the model should have written.")
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.CORRECTED)
    weight = models.FloatField(
        default=1.0,
        help_text="Loss weight as new data: corrected 2, written 1, accepted 0 (replay only: it teaches nothing new).",
    )
    redacted = models.BooleanField(default=False)
    content_hash = models.CharField(max_length=64, help_text="sha256 of messages and completion.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["domain", "id"], name="example_domain_idx")]

    def __str__(self) -> str:
        return f"Example {self.pk} ({self.domain_id})"


class DatasetSnapshot(ImmutableModel):
    """The examples one fine-tune run saw, frozen: a manifest of (example id, hash, split) and its sha256.

    The split is a function of the item alone (examples.heldout_share), so an example
    held out once is held out in every later snapshot and never trained on.
    """

    domain = models.ForeignKey("annotations.Domain", on_delete=models.PROTECT, related_name="dataset_snapshots")
    manifest = models.JSONField(help_text='[[example id, content hash, "train"|"heldout"], …] in id order.')
    sha256 = models.CharField(max_length=64, help_text="Hash of the manifest: the snapshot's identity.")
    train_count = models.PositiveIntegerField()
    heldout_count = models.PositiveIntegerField()
    new_count = models.PositiveIntegerField(help_text="Examples no earlier snapshot of the domain had.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Snapshot {self.pk} of {self.domain_id} ({self.sha256[:12]})"


class FineTuneJob(models.Model):
    """One fine-tune run of a domain (PRODUCT.md §5): train a LoRA adapter, evaluate it, promote it or not.

    `run_key` names the run for the Celery task, which is delivered again if its worker dies
    (acks_late): the task finds the row by it and resumes from the last checkpoint instead of
    starting a second run. At most one unfinished job per domain is a database constraint.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        EVALUATING = "evaluating"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Outcome(models.TextChoices):
        PROMOTED = "promoted"
        KEPT_AS_CANDIDATE = "kept_as_candidate"

    class Trigger(models.TextChoices):
        MANUAL = "manual"
        THRESHOLD = "threshold"

    UNFINISHED = (Status.QUEUED, Status.RUNNING, Status.EVALUATING)

    domain = models.ForeignKey("annotations.Domain", on_delete=models.PROTECT, related_name="finetune_jobs")
    run_key = models.UUIDField(unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    outcome = models.CharField(max_length=24, choices=Outcome.choices, blank=True)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.PROTECT, related_name="jobs")
    base_version = models.ForeignKey(
        ModelVersion,
        on_delete=models.PROTECT,
        related_name="finetune_jobs",
        help_text="The active version it starts from.",
    )
    candidate = models.OneToOneField(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="trained_by"
    )
    hyperparameters = models.JSONField(default=dict, blank=True, help_text="Epochs, learning rate, LoRA rank …")
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Workers that started it.")
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    loss_history = models.JSONField(default=list, blank=True, help_text="[[step, loss], …]")
    tokens_per_second = models.FloatField(null=True, blank=True)
    eta_seconds = models.FloatField(null=True, blank=True)
    device = models.CharField(max_length=32, blank=True)
    evaluation = models.JSONField(default=dict, blank=True, help_text="The evaluation report.")
    error = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="When its worker last reported.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["domain"],
                condition=models.Q(status__in=["queued", "running", "evaluating"]),
                name="finetune_one_unfinished_job_per_domain",
            )
        ]

    def __str__(self) -> str:
        return f"Fine-tune {self.pk} of {self.domain_id} ({self.status})"
