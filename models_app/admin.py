"""Admin for model managers: versions with lineage and metrics, fine-tune jobs with live progress and loss
curves, dataset snapshots with downloads. State changes go through the services (audited), never a raw save."""

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from annotations import charts, roles
from annotations.admin import ReadOnlyAdmin
from annotations.exceptions import InvalidInput, SoraError

from . import finetuning, selectors
from .models import ActiveModel, DatasetSnapshot, FineTuneJob, ModelVersion, TrainingExample


def _run(request, success: str, service, **kwargs) -> None:
    """Call a service; its refusal becomes an admin error message instead of a 500."""
    try:
        service(**kwargs)
    except SoraError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, success)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    """Versions are what wrote drafts: their weights and status change only through the services (audited)."""

    list_display = ["name", "status", "serves", "parent", "held_out_edit_distance", "created_at", "promoted_at"]
    list_filter = ["status"]
    search_fields = ["name", "base_model"]
    actions = ["promote", "roll_back", "retire"]
    readonly_fields = [
        "base_model",
        "adapter_path",
        "parent",
        "status",
        "lineage",
        "metrics",
        "edit_distance_chart",
        "loss_chart",
        "created_at",
        "created_by",
        "promoted_at",
        "promoted_by",
    ]

    def get_queryset(self, request):
        return selectors.version_list()

    def has_add_permission(self, request):
        return False  # `manage.py prepare_model` registers base models; fine-tuning registers the rest

    @admin.display(description="serves")
    def serves(self, version: ModelVersion) -> str:
        return ", ".join(pointer.domain.slug for pointer in version.active_for.all()) or "–"

    @admin.display(description="held-out edit distance")
    def held_out_edit_distance(self, version: ModelVersion) -> str:
        value = version.metrics.get("edit_distance")
        return "–" if value is None else f"{value:.3f}"

    @admin.display(description="lineage (oldest first)")
    def lineage(self, version: ModelVersion):
        chain = selectors.version_lineage(version=version)
        return format_html_join(" → ", "{} ({})", ((v.name, v.status) for v in chain))

    @admin.display(description="edit distance per version")
    def edit_distance_chart(self, version: ModelVersion):
        points = selectors.edit_distance_by_version(version=version)
        groups = [("held-out items", [(name, value) for name, value in points])]
        return charts.bar_chart(
            groups,
            chart_id="version-edit-distance",
            title="Held-out edit distance per version",
            description="Mean normalised edit distance to the approved texts on held-out items, as each "
            "version's evaluation measured it (lower: drafts need fewer corrections).",
        )

    @admin.display(description="training loss")
    def loss_chart(self, version: ModelVersion):
        job = FineTuneJob.objects.filter(candidate=version).first()
        if job is None:
            return "Not trained here."
        return charts.step_chart(
            job.loss_history, chart_id="version-loss", title="Training loss", description=f"Fine-tune job {job.pk}."
        )

    def has_manage_permission(self, request) -> bool:
        return roles.is_manager(request.user)

    @admin.action(
        description="Promote: make it the active model of the domain it was trained for", permissions=["manage"]
    )
    def promote(self, request, queryset):
        for version in queryset:
            job = FineTuneJob.objects.filter(candidate=version).select_related("domain").first()
            if job is None:
                messages.error(request, f"{version.name} was not trained for a domain; use Active models instead.")
                continue
            _run(
                request,
                f"{version.name} now writes {job.domain.slug}'s drafts.",
                finetuning.version_promote,
                version=version,
                domain=job.domain,
                user=request.user,
                reason="promoted in the admin",
            )

    @admin.action(description="Roll back: point the domains it serves back at its parent", permissions=["manage"])
    def roll_back(self, request, queryset):
        for version in queryset:
            for pointer in version.active_for.all():
                _run(
                    request,
                    f"{pointer.domain.slug} rolled back from {version.name}.",
                    finetuning.version_rollback,
                    domain=pointer.domain,
                    user=request.user,
                )

    @admin.action(description="Retire (versions that serve no domain)", permissions=["manage"])
    def retire(self, request, queryset):
        for version in queryset:
            _run(request, f"{version.name} retired.", finetuning.version_retire, version=version, user=request.user)


@admin.register(ActiveModel)
class ActiveModelAdmin(admin.ModelAdmin):
    """Which version writes each domain's drafts. Saving promotes through finetuning.version_promote (audited)."""

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

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)

        class DomainCheckedForm(form):
            def clean(self):
                cleaned = super().clean()
                domain = cleaned.get("domain") or (self.instance.domain if self.instance.pk else None)
                if domain is not None and cleaned.get("version") is not None:
                    try:
                        finetuning.promotion_domain_check(version=cleaned["version"], domain=domain)
                    except InvalidInput as exc:
                        raise ValidationError({"version": exc.extra["errors"]["domain"]}) from None
                return cleaned

        return DomainCheckedForm

    def save_model(self, request, obj, form, change):
        # A promotion like any other: audited, and the model.promoted webhook goes out.
        finetuning.version_promote(version=obj.version, domain=obj.domain, user=request.user, reason="set in the admin")
        obj.pk = ActiveModel.objects.get(domain=obj.domain).pk  # the admin's "saved" message links to it


@admin.register(FineTuneJob)
class FineTuneJobAdmin(admin.ModelAdmin):
    """Jobs are started from a domain (Domains → action) or the API; here they are watched and cancelled."""

    change_form_template = "admin/models_app/finetunejob/change_form.html"
    list_display = ["id", "domain", "status", "outcome", "progress", "last_loss", "tokens_per_second", "created_at"]
    list_filter = ["status", "outcome", "domain"]
    list_select_related = ["domain", "candidate", "base_version"]
    actions = ["cancel"]
    fields = [
        "domain",
        "status",
        "outcome",
        "trigger",
        "progress",
        "tokens_per_second",
        "eta_seconds",
        "device",
        "attempts",
        "base_version",
        "candidate",
        "snapshot",
        "hyperparameters",
        "loss_chart",
        "evaluation_report",
        "error",
        "requested_by",
        "created_at",
        "started_at",
        "finished_at",
    ]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="progress")
    def progress(self, job: FineTuneJob) -> str:
        return f"{job.step} / {job.total_steps}" if job.total_steps else "–"

    @admin.display(description="loss")
    def last_loss(self, job: FineTuneJob) -> str:
        return f"{job.loss_history[-1][1]:.4f}" if job.loss_history else "–"

    @admin.display(description="loss curve")
    def loss_chart(self, job: FineTuneJob):
        return charts.step_chart(
            job.loss_history, chart_id="job-loss", title="Training loss", description="Loss at each training step."
        )

    @admin.display(description="evaluation")
    def evaluation_report(self, job: FineTuneJob):
        report = job.evaluation
        if not report:
            return "Not evaluated yet."
        floors = report.get("retrieval_floor", {})
        sides = [(name, report[name]) for name in ("active", "candidate") if name in report]  # none when not decided
        rows = [
            (
                side["version"],
                "the k nearest" if not floors.get(name) else f"those ≥ {floors[name]:.2f} near",
                f"{side['edit_distance']:.3f}",
                f"{side['chrf']:.3f}",
                _fmt(side.get("served_edit_distance")),
                _fmt(side.get("replay_loss")),
            )
            for name, side in sides
        ]
        table = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows
        )
        reasons = format_html_join("", "<li>{}</li>", ((reason,) for reason in report["reasons"]))
        confidence = report.get("confidence")
        gain = ""
        if confidence:
            interval = confidence.get("ci95")
            gain = format_html(
                " Paired gain {} ({}{} better, {} same, {} worse; signed-rank p = {}).",
                f"{confidence['mean_gain']:+.3f}",
                f"95% CI {interval[0]:+.3f} to {interval[1]:+.3f}; " if interval else "",
                confidence["wins"],
                confidence["ties"],
                confidence["losses"],
                f"{confidence['p_value']:.3f}",
            )
        return format_html(
            "<table><thead><tr><th>version</th><th>examples shown</th>"
            "<th>edit distance (unmatched examples; deciding)</th><th>chrF</th>"
            "<th>edit distance (nearest examples, as served)</th><th>replay loss</th></tr></thead>"
            "<tbody>{}</tbody></table><p>{} held-out items of this round, {} replay items.{} Promote: {}.</p>"
            "<ul>{}</ul>",
            table,
            report["heldout_items"],
            report["replay_items"],
            gain,
            "yes" if report["promote"] else "no",
            reasons,
        )

    def has_manage_permission(self, request) -> bool:
        return roles.is_manager(request.user)

    @admin.action(description="Cancel the selected jobs", permissions=["manage"])
    def cancel(self, request, queryset):
        for job in queryset:
            _run(
                request,
                f"Job {job.pk}: cancel requested.",
                finetuning.finetune_job_cancel,
                job_id=job.pk,
                user=request.user,
            )


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


@admin.register(TrainingExample)
class TrainingExampleAdmin(ReadOnlyAdmin):
    """What a run trains on, as it will see it: the prompt and the approved (redacted where the domain says so)
    text. Written on approval, never edited; filter by `redacted` to check a redacting domain's examples."""

    list_display = ["id", "domain", "item", "weight", "redacted", "created_at"]
    list_filter = ["domain", "redacted"]
    list_select_related = ["domain", "item"]
    fields = ["domain", "item", "messages", "completion", "weight", "redacted", "content_hash", "created_at"]
    readonly_fields = fields
    search_fields = ["completion"]


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(ReadOnlyAdmin):
    list_display = ["id", "domain", "train_count", "heldout_count", "new_count", "short_hash", "created_at", "download"]
    list_filter = ["domain"]
    fields = ["domain", "sha256", "train_count", "heldout_count", "new_count", "created_by", "created_at", "download"]
    readonly_fields = fields

    def get_queryset(self, request):
        return selectors.snapshot_list()

    @admin.display(description="hash")
    def short_hash(self, snapshot: DatasetSnapshot) -> str:
        return snapshot.sha256[:12]

    @admin.display(description="JSONL")
    def download(self, snapshot: DatasetSnapshot):
        return format_html('<a href="{}">download</a>', reverse("dataset-export", args=[snapshot.pk]))
