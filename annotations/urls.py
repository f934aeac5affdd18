from django.urls import path, register_converter

from . import apis


class IdConverter:
    """A primary key that fits a 64-bit column: longer numbers are a 404, not a database error."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(IdConverter, "id")

urlpatterns = [
    path("items/", apis.ItemListCreateApi.as_view(), name="item-list"),
    path("items/<id:item_id>/", apis.ItemDetailApi.as_view(), name="item-detail"),
    path("items/<id:item_id>/generate/", apis.ItemGenerateApi.as_view(), name="item-generate"),
    path("items/<id:item_id>/heartbeat/", apis.ItemHeartbeatApi.as_view(), name="item-heartbeat"),
    path("items/<id:item_id>/release/", apis.ItemReleaseApi.as_view(), name="item-release"),
    path("items/<id:item_id>/reviews/", apis.ItemReviewCreateApi.as_view(), name="item-reviews"),
    path("queue/claim/", apis.QueueClaimApi.as_view(), name="queue-claim"),
]
