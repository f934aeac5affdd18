from .models import ActiveModel, ModelVersion


def active_version_for(*, domain_id: int) -> ModelVersion | None:
    pointer = ActiveModel.objects.select_related("version").filter(domain_id=domain_id).first()
    return pointer.version if pointer else None
