from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models
from django.db.models import Q

# More examples than this make prompts long and drafts slow on a small model, and crowd out the new input.
MAX_RETRIEVAL_EXAMPLES = 8


class Domain(models.Model):
    """A kind of work with its own prompt, guidelines, rubric and rules (PRODUCT.md §3)."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    system_prompt = models.TextField(blank=True, help_text="The model's system message; empty: none.")
    prompt_template = models.TextField(
        help_text="Turns an item into the model's prompt (the user message). Placeholders: {input}, {metadata}."
    )
    sampling = models.JSONField(
        default=dict,
        blank=True,
        help_text='Decoding settings, e.g. {"temperature": 0, "max_new_tokens": 256}; temperature 0 is greedy.',
    )
    guidelines = models.TextField(blank=True, help_text="What reviewers must check, shown beside every draft.")
    rubric = models.JSONField(
        default=list, blank=True, help_text='Named 1–5 scores: [{"name": "tone", "description": "…"}, …]'
    )
    approvals_required = models.PositiveSmallIntegerField(
        default=1, help_text="Distinct reviewers who must approve before the item is approved."
    )
    redact_identifiers = models.BooleanField(
        default=False, help_text="Replace personal identifiers before training and in webhooks."
    )
    finetune_threshold = models.PositiveIntegerField(
        default=50, help_text="New approved examples that start a fine-tune run."
    )
    retrieval_examples = models.PositiveSmallIntegerField(
        default=2,
        validators=[MaxValueValidator(MAX_RETRIEVAL_EXAMPLES)],
        help_text="Approved examples most like the new input shown to the model in each prompt (0: none).",
    )
    reviewers = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="review_domains",
        help_text="Users in the reviewer group who may review this domain.",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    def clean(self) -> None:
        from models_app.inference.prompts import sampling_errors

        if errors := sampling_errors(self.sampling):
            raise ValidationError({"sampling": errors})

    def rubric_names(self) -> list[str]:
        return [str(entry.get("name")) for entry in self.rubric if isinstance(entry, dict)]


class Item(models.Model):
    """One piece of work: an input, a draft, and its path to approval."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        GENERATING = "generating"
        READY = "ready"
        IN_REVIEW = "in_review"
        APPROVED = "approved"
        REJECTED = "rejected"
        FAILED = "failed"

    domain = models.ForeignKey(Domain, on_delete=models.PROTECT, related_name="items")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    # Bumped by every state change; a review must name the version it was made on.
    version = models.PositiveIntegerField(default=1)
    priority = models.SmallIntegerField(default=0, help_text="Higher is claimed first.")
    external_id = models.CharField(max_length=200, blank=True)
    input = models.TextField()
    metadata = models.JSONField(default=dict, blank=True)
    draft = models.TextField(blank=True, help_text="The current draft (the latest generation).")
    uncertainty = models.FloatField(
        null=True,
        blank=True,
        help_text="Mean negative log-probability per token of the model's draft; higher: less sure.",
    )
    final_text = models.TextField(blank=True, help_text="The latest approved text.")
    approvals = models.PositiveSmallIntegerField(default=0)

    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="submitted_items"
    )
    # NULL, not "", for "no key": the unique constraint must ignore items without one.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    request_hash = models.CharField(max_length=64, blank=True)

    # The current lease; Claim keeps the history.
    # PROTECT: a user holding a lease cannot be deleted (deactivate them; the lease expires).
    lease_owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="leased_items"
    )
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["submitted_by", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="item_unique_idempotency_key_per_user",
            ),
            models.CheckConstraint(
                condition=~Q(status="in_review") | Q(lease_owner__isnull=False, lease_expires_at__isnull=False),
                name="item_in_review_has_lease",
            ),
        ]
        indexes = [
            # claim-next: the best ready item of one domain…
            models.Index(
                "domain",
                models.F("priority").desc(),
                "created_at",
                "id",
                condition=Q(status="ready"),
                name="item_queue_ready_idx",
            ),
            # …and of several: walked in queue order, filtered by domain (no sort of the whole queue).
            models.Index(
                models.F("priority").desc(),
                "created_at",
                "id",
                condition=Q(status="ready"),
                name="item_queue_all_domains_idx",
            ),
            # claim-next: leases that ran out, per domain (the claim's "any expired here?" probe and its sweep).
            models.Index(
                fields=["domain", "lease_expires_at"], condition=Q(status="in_review"), name="item_lease_expiry_idx"
            ),
            # lists: newest first, filtered by domain / status / external id.
            models.Index(fields=["domain", "status", "-created_at"], name="item_domain_status_idx"),
            models.Index(fields=["-created_at", "-id"], name="item_recent_idx"),
            models.Index(fields=["external_id"], name="item_external_id_idx"),
        ]

    def __str__(self) -> str:
        return f"Item {self.pk} ({self.domain_id}, {self.status})"


class Generation(models.Model):
    """A draft: written by a model, or handed in with the item.

    While a model writes it, `text` holds what has been streamed so far and
    `seq` the number of chunks in it, so a viewer who joins late starts from
    here and continues with chunk seq + 1 (PRODUCT.md §6).
    """

    class Source(models.TextChoices):
        MODEL = "model"
        SUBMITTED = "submitted"

    class Status(models.TextChoices):
        QUEUED = "queued"
        STREAMING = "streaming"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    # Still being written: a worker has it or will take it.
    LIVE_STATUSES = (Status.QUEUED, Status.STREAMING)

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="generations")
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.MODEL)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DONE)
    text = models.TextField(blank=True)
    model_version = models.ForeignKey(
        "models_app.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="generations"
    )
    seq = models.PositiveIntegerField(default=0, help_text="Chunks streamed so far.")
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Workers that started it (a lost worker retries).")
    token_logprobs = models.JSONField(default=list, blank=True, help_text="Log-probability of each generated token.")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True, help_text="When the broker took the task.")
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="When its worker last stored a chunk.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"Generation {self.pk} of item {self.item_id}"


class Claim(models.Model):
    """A reviewer's lease on an item. At most one open claim per item (a database constraint)."""

    class EndReason(models.TextChoices):
        REVIEWED = "reviewed"
        RELEASED = "released"
        SKIPPED = "skipped"  # given back for others: this reviewer is not offered the item again
        EXPIRED = "expired"

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="claims")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="claims")
    claimed_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=16, choices=EndReason.choices, blank=True)

    class Meta:
        ordering = ["-claimed_at"]
        constraints = [
            models.UniqueConstraint(fields=["item"], condition=Q(ended_at__isnull=True), name="claim_one_open_per_item")
        ]
        indexes = [models.Index(fields=["reviewer", "-claimed_at"], name="claim_reviewer_idx")]

    def __str__(self) -> str:
        return f"Claim of item {self.item_id} by {self.reviewer_id}"


class Review(models.Model):
    class Decision(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews")
    claim = models.OneToOneField(Claim, null=True, blank=True, on_delete=models.SET_NULL, related_name="review")
    # The draft that was reviewed (its model version is what the metrics compare); None: no finished draft.
    generation = models.ForeignKey(Generation, null=True, blank=True, on_delete=models.SET_NULL, related_name="reviews")
    decision = models.CharField(max_length=16, choices=Decision.choices)
    final_text = models.TextField(blank=True)
    reason = models.TextField(blank=True)
    scores = models.JSONField(default=dict, blank=True)
    item_version = models.PositiveIntegerField(help_text="The item version the review was made on.")
    time_spent_ms = models.PositiveIntegerField(default=0, help_text="From claim to decision.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            # A reviewer approves an item at most once: two approvals need two people.
            models.UniqueConstraint(
                fields=["item", "reviewer"], condition=Q(decision="approve"), name="review_one_approval_per_reviewer"
            )
        ]
        indexes = [
            models.Index(fields=["reviewer", "-created_at"], name="review_reviewer_idx"),
            models.Index(fields=["decision", "-created_at"], name="review_decision_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.decision} of item {self.item_id} by {self.reviewer_id}"


class ImmutableQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise ValidationError(f"{self.model.__name__} rows are immutable.")

    def delete(self):
        raise ValidationError(f"{self.model.__name__} rows are immutable.")


class ImmutableModel(models.Model):
    """Rows written once and never changed: save() of an existing row, delete(), and queryset
    update()/delete() are refused. (Raw SQL and cascades from a deleted item are not stopped.)"""

    objects = ImmutableQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValidationError(f"{type(self).__name__} rows are immutable.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValidationError(f"{type(self).__name__} rows are immutable.")


class Correction(ImmutableModel):
    """What a reviewer changed: the model's draft against the approved text. Training data."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="corrections")
    review = models.OneToOneField(Review, on_delete=models.PROTECT, related_name="correction")
    generation = models.ForeignKey(Generation, null=True, blank=True, on_delete=models.SET_NULL)
    domain = models.ForeignKey(Domain, on_delete=models.PROTECT, related_name="corrections")
    draft = models.TextField()
    final = models.TextField()
    diff = models.JSONField(help_text='Word-level operations: [["equal"|"insert"|"delete", "text"], …]')
    edit_distance = models.FloatField(help_text="Word-level Levenshtein distance / longer length, 0–1.")
    edited = models.BooleanField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["domain", "-created_at"], name="correction_domain_idx")]

    def __str__(self) -> str:
        return f"Correction of item {self.item_id}"


class AuditEvent(ImmutableModel):
    """Who changed what, when, from which state to which."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    verb = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["target_type", "target_id", "-created_at"], name="audit_target_idx"),
            models.Index(fields=["actor", "-created_at"], name="audit_actor_idx"),
            models.Index(fields=["verb", "-created_at"], name="audit_verb_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.verb} {self.target_type}:{self.target_id}"
