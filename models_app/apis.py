"""REST API v1 for model managers: versions, promotion and rollback, fine-tune jobs, dataset snapshots
(PRODUCT.md §5). Views only parse, call, shape."""

from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response

from annotations import roles
from annotations.apis import HasRole, StrictCharField, storable_json
from sora_web.api_errors import ApiView, error_response

from . import datasets, finetuning, selectors
from .hyperparameters import TrainingSettings
from .models import DatasetSnapshot, FineTuneJob, ModelVersion

ManagerOnly = HasRole.of(roles.MODEL_MANAGER)


class VersionOutputSerializer(serializers.ModelSerializer):
    parent = serializers.CharField(source="parent.name", default=None, allow_null=True)
    active_for = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "status", "base_model", "adapter_path", "parent", "metrics", "active_for"]
        fields += ["created_at", "promoted_at"]

    def get_active_for(self, version: ModelVersion) -> list[str]:
        return [pointer.domain.slug for pointer in version.active_for.all()]


class JobOutputSerializer(serializers.ModelSerializer):
    domain = serializers.CharField(source="domain.slug")
    base_version = serializers.CharField(source="base_version.name")
    candidate = serializers.CharField(source="candidate.name", default=None, allow_null=True)
    requested_by = serializers.CharField(source="requested_by.username", default=None, allow_null=True)

    class Meta:
        model = FineTuneJob
        fields = [
            "id",
            "domain",
            "status",
            "outcome",
            "trigger",
            "snapshot",
            "base_version",
            "candidate",
            "hyperparameters",
            "attempts",
            "step",
            "total_steps",
            "loss_history",
            "tokens_per_second",
            "eta_seconds",
            "device",
            "evaluation",
            "error",
            "requested_by",
            "created_at",
            "started_at",
            "finished_at",
        ]


class JobSummaryOutputSerializer(JobOutputSerializer):
    """A job in a list: its last loss instead of the whole history (the detail has that)."""

    loss = serializers.SerializerMethodField()

    class Meta(JobOutputSerializer.Meta):
        fields = [field for field in JobOutputSerializer.Meta.fields if field != "loss_history"] + ["loss"]

    def get_loss(self, job: FineTuneJob) -> float | None:
        return job.loss_history[-1][1] if job.loss_history else None


class SnapshotOutputSerializer(serializers.ModelSerializer):
    domain = serializers.CharField(source="domain.slug")

    class Meta:
        model = DatasetSnapshot
        fields = ["id", "domain", "sha256", "train_count", "heldout_count", "new_count", "created_at"]


# --- versions ----------------------------------------------------------------------


class ModelListApi(ApiView):
    permission_classes = [ManagerOnly]
    pagination_class = PageNumberPagination  # also tells the schema that the list is paginated

    @extend_schema(responses=VersionOutputSerializer(many=True), summary="Model versions, newest first")
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.version_list(), request, view=self)
        return paginator.get_paginated_response(VersionOutputSerializer(page, many=True).data)


class ModelPromoteApi(ApiView):
    permission_classes = [ManagerOnly]

    class PromoteInputSerializer(serializers.Serializer):
        domain = StrictCharField(
            max_length=64,
            required=False,
            help_text="The domain it is to serve. May be left out for a version fine-tuned on one domain: that one.",
        )

    @extend_schema(
        request=PromoteInputSerializer,
        responses={200: VersionOutputSerializer, 409: error_response("The version is training or failed")},
        summary="Make it a domain's model (by default the domain it was fine-tuned on)",
    )
    def post(self, request, version_id: int):
        payload = self.PromoteInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        version = selectors.version_get(version_id=version_id)
        domain = selectors.domain_to_promote_to(version=version, slug=payload.validated_data.get("domain"))
        finetuning.version_promote(version=version, domain=domain, user=request.user, reason="promoted by hand")
        return Response(VersionOutputSerializer(selectors.version_get(version_id=version_id)).data)


class ModelRollbackApi(ApiView):
    permission_classes = [ManagerOnly]

    class RollbackInputSerializer(serializers.Serializer):
        domain = StrictCharField(max_length=64, required=False, help_text="Needed when it serves several domains.")

    @extend_schema(
        request=RollbackInputSerializer,
        responses={200: VersionOutputSerializer, 409: error_response("The active version has no parent")},
        summary="Point the domain this version serves back at its parent; returns the parent",
    )
    def post(self, request, version_id: int):
        payload = self.RollbackInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        version = selectors.version_get(version_id=version_id)
        domain = selectors.domain_served_by(version=version, slug=payload.validated_data.get("domain"))
        parent = finetuning.version_rollback(domain=domain, user=request.user)
        return Response(VersionOutputSerializer(selectors.version_get(version_id=parent.pk)).data)


# --- fine-tune jobs ------------------------------------------------------------------


class JobListCreateApi(ApiView):
    permission_classes = [ManagerOnly]
    pagination_class = PageNumberPagination  # also tells the schema that the list is paginated

    class JobCreateInputSerializer(serializers.Serializer):
        domain = StrictCharField(max_length=64)
        hyperparameters = serializers.DictField(required=False, default=dict, validators=[storable_json])

        def validate_hyperparameters(self, value: dict) -> dict:
            if problems := TrainingSettings.errors(value):
                raise serializers.ValidationError(problems)
            return value

    class JobFilterSerializer(serializers.Serializer):
        domain = serializers.CharField(max_length=64, required=False)
        status = serializers.ChoiceField(choices=FineTuneJob.Status.choices, required=False)

    @extend_schema(parameters=[JobFilterSerializer], responses=JobSummaryOutputSerializer(many=True), summary="Jobs")
    def get(self, request):
        filters = self.JobFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.job_list(filters=filters.validated_data), request, view=self)
        return paginator.get_paginated_response(JobSummaryOutputSerializer(page, many=True).data)

    @extend_schema(
        request=JobCreateInputSerializer,
        responses={
            201: JobOutputSerializer,
            409: error_response("A job is running, there is no data, or no active model to start from"),
        },
        summary="Start a fine-tune job for a domain",
    )
    def post(self, request):
        payload = self.JobCreateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        domain = selectors.domain_get(slug=payload.validated_data["domain"])
        job = finetuning.finetune_job_start(
            domain=domain, user=request.user, hyperparameters=payload.validated_data["hyperparameters"]
        )
        return Response(JobOutputSerializer(selectors.job_get(job_id=job.pk)).data, status=status.HTTP_201_CREATED)


class JobDetailApi(ApiView):
    permission_classes = [ManagerOnly]

    @extend_schema(responses=JobOutputSerializer, summary="A job: status, step, loss history, evaluation")
    def get(self, request, job_id: int):
        return Response(JobOutputSerializer(selectors.job_get(job_id=job_id)).data)


class JobCancelApi(ApiView):
    permission_classes = [ManagerOnly]

    @extend_schema(
        request=None,
        responses={200: JobOutputSerializer, 409: error_response("The job has finished")},
        summary="Cancel (a running job stops at its next step)",
    )
    def post(self, request, job_id: int):
        selectors.job_get(job_id=job_id)
        finetuning.finetune_job_cancel(job_id=job_id, user=request.user)
        return Response(JobOutputSerializer(selectors.job_get(job_id=job_id)).data)


# --- dataset snapshots -------------------------------------------------------------


class SnapshotListApi(ApiView):
    permission_classes = [ManagerOnly]
    pagination_class = PageNumberPagination  # also tells the schema that the list is paginated

    @extend_schema(responses=SnapshotOutputSerializer(many=True), summary="Dataset snapshots, newest first")
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.snapshot_list(), request, view=self)
        return paginator.get_paginated_response(SnapshotOutputSerializer(page, many=True).data)


class SnapshotExportApi(ApiView):
    permission_classes = [ManagerOnly]

    @extend_schema(
        responses={(200, "application/jsonl"): OpenApiResponse(description="One chat-messages record per line")},
        summary="The snapshot as JSON lines (chat-messages format)",
    )
    def get(self, request, snapshot_id: int):
        snapshot = selectors.snapshot_get(snapshot_id=snapshot_id)
        response = StreamingHttpResponse(datasets.snapshot_jsonl(snapshot=snapshot), content_type="application/jsonl")
        response["Content-Disposition"] = f'attachment; filename="{snapshot.domain.slug}-{snapshot.sha256[:12]}.jsonl"'
        return response
