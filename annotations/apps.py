from django.apps import AppConfig


class AnnotationsConfig(AppConfig):
    name = "annotations"
    verbose_name = "Review workflow"

    def ready(self) -> None:
        from . import signals  # noqa: F401 (connects the audit of sign-ins)
