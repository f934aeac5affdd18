from django.urls import path

from . import apis

urlpatterns = [
    path("models/", apis.ModelListApi.as_view(), name="model-list"),
    path("models/<id:version_id>/promote/", apis.ModelPromoteApi.as_view(), name="model-promote"),
    path("models/<id:version_id>/rollback/", apis.ModelRollbackApi.as_view(), name="model-rollback"),
    path("finetune-jobs/", apis.JobListCreateApi.as_view(), name="finetune-job-list"),
    path("finetune-jobs/<id:job_id>/", apis.JobDetailApi.as_view(), name="finetune-job-detail"),
    path("finetune-jobs/<id:job_id>/cancel/", apis.JobCancelApi.as_view(), name="finetune-job-cancel"),
    path("datasets/", apis.SnapshotListApi.as_view(), name="dataset-list"),
    path("datasets/<id:snapshot_id>/export/", apis.SnapshotExportApi.as_view(), name="dataset-export"),
]
