"""Reads for model versions, fine-tune jobs and dataset snapshots. Missing rows raise, so views cannot forget."""

from django.db.models import Prefetch, QuerySet

from annotations.exceptions import InvalidInput, NotFound
from annotations.models import Domain

from .models import ActiveModel, DatasetSnapshot, FineTuneJob, ModelVersion


def active_version_for(*, domain_id: int) -> ModelVersion | None:
    pointer = ActiveModel.objects.select_related("version").filter(domain_id=domain_id).first()
    return pointer.version if pointer else None


def version_list() -> QuerySet[ModelVersion]:
    pointers = Prefetch("active_for", queryset=ActiveModel.objects.select_related("domain"))
    return ModelVersion.objects.select_related("parent").prefetch_related(pointers).order_by("-created_at", "-id")


def version_get(*, version_id: int) -> ModelVersion:
    version = version_list().filter(pk=version_id).first()
    if version is None:
        raise NotFound("Model version not found.")
    return version


def domain_get(*, slug: str) -> Domain:
    """A domain named in a request body: unknown is a 400 on that field."""
    domain = Domain.objects.filter(slug=slug).first()
    if domain is None:
        raise InvalidInput("domain", f"Unknown domain {slug!r}.")
    return domain


def domain_served_by(*, version: ModelVersion, slug: str | None) -> Domain:
    """The domain this version is active for (the one named, when it serves several)."""
    domains = [pointer.domain for pointer in version.active_for.all()]
    if slug:
        domains = [domain for domain in domains if domain.slug == slug]
    if not domains:
        raise InvalidInput("domain", f"{version.name!r} is not the active model of {slug or 'any domain'}.")
    if len(domains) > 1:
        raise InvalidInput("domain", f"{version.name!r} serves several domains; name one.")
    return domains[0]


def domain_to_promote_to(*, version: ModelVersion, slug: str | None) -> Domain:
    """The domain named, or, when none is, the one the version was fine-tuned on (a base model serves any
    domain, so it needs one named)."""
    if slug:
        return domain_get(slug=slug)
    trained_for = version_trained_for(version=version)
    if trained_for is None:
        raise InvalidInput("domain", f"{version.name!r} was not fine-tuned on a domain; name the domain to serve.")
    return trained_for


def version_trained_for(*, version: ModelVersion) -> Domain | None:
    """The domain whose examples trained this version or one of its ancestors; None for a base model."""
    for ancestor in reversed(version_lineage(version=version)):
        job = FineTuneJob.objects.select_related("domain").filter(candidate=ancestor).first()
        if job is not None:
            return job.domain
    return None


def job_list(*, filters: dict) -> QuerySet[FineTuneJob]:
    jobs = FineTuneJob.objects.select_related("domain", "base_version", "candidate", "requested_by")
    if filters.get("domain"):
        jobs = jobs.filter(domain__slug=filters["domain"])
    if filters.get("status"):
        jobs = jobs.filter(status=filters["status"])
    return jobs.order_by("-created_at", "-id")


def job_get(*, job_id: int) -> FineTuneJob:
    job = job_list(filters={}).filter(pk=job_id).first()
    if job is None:
        raise NotFound("Fine-tune job not found.")
    return job


def snapshot_list() -> QuerySet[DatasetSnapshot]:
    return DatasetSnapshot.objects.select_related("domain").defer("manifest").order_by("-created_at", "-id")


def snapshot_get(*, snapshot_id: int) -> DatasetSnapshot:
    snapshot = DatasetSnapshot.objects.select_related("domain").filter(pk=snapshot_id).first()
    if snapshot is None:
        raise NotFound("Dataset snapshot not found.")
    return snapshot


def version_lineage(*, version: ModelVersion) -> list[ModelVersion]:
    """The version's ancestors and itself, oldest first."""
    chain, current = [], version
    while current is not None and current not in chain:
        chain.append(current)
        current = current.parent
    return chain[::-1]


def edit_distance_by_version(*, version: ModelVersion) -> list[tuple[str, float]]:
    """(version name, held-out edit distance) along the fine-tuning history of the domain the version belongs
    to, as each evaluation measured it: a job reports both the version it started from and its candidate."""
    job = (
        FineTuneJob.objects.filter(candidate=version).first()
        or FineTuneJob.objects.filter(base_version=version).first()
    )
    if job is None:
        return []
    measured: dict[str, float] = {}
    jobs = FineTuneJob.objects.filter(domain_id=job.domain_id, status=FineTuneJob.Status.SUCCEEDED).order_by("id")
    for done in jobs:
        for side in ("active", "candidate"):
            report = done.evaluation.get(side) or {}
            if "version" in report and report["version"] not in measured:
                measured[report["version"]] = report["edit_distance"]
    return list(measured.items())
