from django.urls import path

from . import apis

urlpatterns = [
    path("webhooks/", apis.EndpointListCreateApi.as_view(), name="webhook-list"),
    path("webhooks/<id:endpoint_id>/", apis.EndpointDetailApi.as_view(), name="webhook-detail"),
    path("webhooks/<id:endpoint_id>/rotate-secret/", apis.EndpointRotateSecretApi.as_view(), name="webhook-rotate"),
    path("webhooks/<id:endpoint_id>/test/", apis.EndpointTestApi.as_view(), name="webhook-test"),
    path("webhooks/<id:endpoint_id>/deliveries/", apis.DeliveryListApi.as_view(), name="webhook-deliveries"),
    path("deliveries/<id:delivery_id>/", apis.DeliveryDetailApi.as_view(), name="delivery-detail"),
    path("deliveries/<id:delivery_id>/redeliver/", apis.DeliveryRedeliverApi.as_view(), name="delivery-redeliver"),
]
