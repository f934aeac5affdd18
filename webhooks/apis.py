"""REST API v1 for webhook endpoints and their delivery log (PRODUCT.md §5, §7). Views only parse, call, shape."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response

from annotations import roles
from annotations.apis import HasRole, StrictCharField
from sora_web.api_errors import ApiView, error_response

from . import selectors, services
from .models import SUBSCRIBABLE, Delivery, DeliveryAttempt, Endpoint, Event

ManagerOnly = HasRole.of(roles.MODEL_MANAGER)


class EndpointOutputSerializer(serializers.ModelSerializer):
    domains = serializers.SerializerMethodField()

    class Meta:
        model = Endpoint
        fields = ["id", "url", "events", "domains", "description", "is_active", "failing_since", "disabled_at"]
        fields += ["disabled_reason", "previous_secret_expires_at", "created_at", "updated_at"]

    def get_domains(self, endpoint: Endpoint) -> list[str]:
        return [domain.slug for domain in endpoint.domains.all()]


class EndpointWithSecretOutputSerializer(EndpointOutputSerializer):
    """Only on creation and rotation: the `whsec_` secret the receiver verifies with."""

    class Meta(EndpointOutputSerializer.Meta):
        fields = [*EndpointOutputSerializer.Meta.fields, "secret"]


class AttemptOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = ["number", "started_at", "status_code", "latency_ms", "response_body", "error"]


class DeliveryOutputSerializer(serializers.ModelSerializer):
    webhook_id = serializers.CharField(source="message_id")
    attempt_log = AttemptOutputSerializer(many=True)

    class Meta:
        model = Delivery
        fields = ["id", "endpoint", "event_type", "webhook_id", "status", "attempts", "next_attempt_at"]
        fields += ["last_status_code", "delivered_at", "created_at", "body", "attempt_log"]


class EndpointInputSerializer(serializers.Serializer):
    url = StrictCharField(max_length=2000)
    events = serializers.ListField(child=serializers.ChoiceField(choices=[str(e) for e in SUBSCRIBABLE]), min_length=1)
    domains = serializers.ListField(child=StrictCharField(max_length=64), required=False, default=list)
    description = StrictCharField(max_length=500, required=False, default="", allow_blank=True)


class EndpointUpdateSerializer(serializers.Serializer):
    url = StrictCharField(max_length=2000, required=False)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=[str(e) for e in SUBSCRIBABLE]), min_length=1, required=False
    )
    domains = serializers.ListField(child=StrictCharField(max_length=64), required=False)
    description = StrictCharField(max_length=500, required=False, allow_blank=True)
    is_active = serializers.BooleanField(required=False)


class EndpointListCreateApi(ApiView):
    permission_classes = [ManagerOnly]
    pagination_class = PageNumberPagination  # also tells the schema that the list is paginated

    @extend_schema(responses=EndpointOutputSerializer(many=True), summary="Webhook endpoints")
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.endpoint_list(), request, view=self)
        return paginator.get_paginated_response(EndpointOutputSerializer(page, many=True).data)

    @extend_schema(
        request=EndpointInputSerializer,
        responses={201: EndpointWithSecretOutputSerializer},
        summary="Subscribe a URL; the answer carries its signing secret (shown only here and on rotation)",
    )
    def post(self, request):
        payload = EndpointInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        endpoint = services.endpoint_create(user=request.user, **payload.validated_data)
        body = EndpointWithSecretOutputSerializer(selectors.endpoint_get(endpoint_id=endpoint.pk)).data
        return Response(body, status=status.HTTP_201_CREATED)


class EndpointDetailApi(ApiView):
    permission_classes = [ManagerOnly]

    @extend_schema(responses=EndpointOutputSerializer, summary="A webhook endpoint")
    def get(self, request, endpoint_id: int):
        return Response(EndpointOutputSerializer(selectors.endpoint_get(endpoint_id=endpoint_id)).data)

    @extend_schema(
        request=EndpointUpdateSerializer,
        responses=EndpointOutputSerializer,
        summary="Change it; is_active=true turns a disabled endpoint back on (its pending deliveries go out)",
    )
    def patch(self, request, endpoint_id: int):
        endpoint = selectors.endpoint_get(endpoint_id=endpoint_id)
        payload = EndpointUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.endpoint_update(endpoint=endpoint, user=request.user, **payload.validated_data)
        return Response(EndpointOutputSerializer(selectors.endpoint_get(endpoint_id=endpoint_id)).data)

    @extend_schema(responses={204: None}, summary="Delete it and its delivery log")
    def delete(self, request, endpoint_id: int):
        services.endpoint_delete(endpoint=selectors.endpoint_get(endpoint_id=endpoint_id), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class EndpointRotateSecretApi(ApiView):
    permission_classes = [ManagerOnly]

    @extend_schema(
        request=None,
        responses=EndpointWithSecretOutputSerializer,
        summary="A new secret; the old one keeps signing too until previous_secret_expires_at",
    )
    def post(self, request, endpoint_id: int):
        endpoint = services.endpoint_secret_rotate(
            endpoint=selectors.endpoint_get(endpoint_id=endpoint_id), user=request.user
        )
        return Response(EndpointWithSecretOutputSerializer(selectors.endpoint_get(endpoint_id=endpoint.pk)).data)


class EndpointTestApi(ApiView):
    permission_classes = [ManagerOnly]

    @extend_schema(
        request=None,
        responses={202: DeliveryOutputSerializer, 409: error_response("The endpoint is off")},
        summary="Send a `ping` event now",
    )
    def post(self, request, endpoint_id: int):
        endpoint = selectors.endpoint_get(endpoint_id=endpoint_id)
        delivery = services.endpoint_ping(endpoint=endpoint, user=request.user)
        return Response(
            DeliveryOutputSerializer(selectors.delivery_get(delivery_id=delivery.pk)).data,
            status=status.HTTP_202_ACCEPTED,
        )


class DeliveryListApi(ApiView):
    permission_classes = [ManagerOnly]
    pagination_class = PageNumberPagination  # also tells the schema that the list is paginated

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Delivery.Status.choices, required=False)
        event = serializers.ChoiceField(choices=Event.choices, required=False)

    @extend_schema(
        parameters=[FilterSerializer],
        responses=DeliveryOutputSerializer(many=True),
        summary="The delivery log of an endpoint, newest first, with every attempt",
    )
    def get(self, request, endpoint_id: int):
        endpoint = selectors.endpoint_get(endpoint_id=endpoint_id)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        paginator = self.pagination_class()
        deliveries = selectors.delivery_list(endpoint=endpoint, filters=filters.validated_data)
        page = paginator.paginate_queryset(deliveries, request, view=self)
        return paginator.get_paginated_response(DeliveryOutputSerializer(page, many=True).data)


class DeliveryDetailApi(ApiView):
    permission_classes = [ManagerOnly]

    @extend_schema(responses=DeliveryOutputSerializer, summary="A delivery and its attempts")
    def get(self, request, delivery_id: int):
        return Response(DeliveryOutputSerializer(selectors.delivery_get(delivery_id=delivery_id)).data)


class DeliveryRedeliverApi(ApiView):
    permission_classes = [ManagerOnly]

    @extend_schema(
        request=None,
        responses={202: DeliveryOutputSerializer, 409: error_response("Being sent, or the endpoint is off")},
        summary="Send it again now, with the same webhook-id",
    )
    def post(self, request, delivery_id: int):
        selectors.delivery_get(delivery_id=delivery_id)
        services.delivery_redeliver(delivery_id=delivery_id, user=request.user)
        return Response(
            DeliveryOutputSerializer(selectors.delivery_get(delivery_id=delivery_id)).data,
            status=status.HTTP_202_ACCEPTED,
        )
