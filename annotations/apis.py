"""REST API v1 for items, the queue and reviews (PRODUCT.md §5). Views only parse, call, shape."""

import math

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission
from rest_framework.response import Response

from sora_web.api_errors import ApiView, error_response

from . import roles, selectors, services
from .models import Generation, Item, Review


class HasRole(BasePermission):
    """Lets a view name the roles that may call it: `permission_classes = [HasRole.of(...)]`."""

    roles: tuple[str, ...] = ()

    @classmethod
    def of(cls, *names: str) -> type["HasRole"]:
        return type(f"HasRole_{'_'.join(names)}", (cls,), {"roles": names})

    def has_permission(self, request, view) -> bool:
        return roles.has_role(request.user, *self.roles)


MAX_JSON_DEPTH = 32


def storable_json(value) -> None:
    """Refuse what the databases cannot store or serialise: NUL characters (PostgreSQL),
    lone surrogates (not UTF-8), non-finite numbers (not JSON) and very deep nesting."""
    stack = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise serializers.ValidationError(f"Nested deeper than {MAX_JSON_DEPTH} levels.")
        if isinstance(current, str):
            if "\x00" in current:
                raise serializers.ValidationError("Null characters are not allowed.")
            try:
                current.encode("utf-8")
            except UnicodeEncodeError:
                raise serializers.ValidationError("Text must be valid Unicode (no lone surrogates).")
        elif isinstance(current, float) and not math.isfinite(current):
            raise serializers.ValidationError("Numbers must be finite.")
        elif isinstance(current, dict):
            stack.extend((part, depth + 1) for pair in current.items() for part in pair)
        elif isinstance(current, list):
            stack.extend((part, depth + 1) for part in current)


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of quietly turning them into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


# --- Output -----------------------------------------------------------------


class GenerationOutputSerializer(serializers.ModelSerializer):
    model_version = serializers.CharField(source="model_version.name", default=None, allow_null=True)

    class Meta:
        model = Generation
        fields = ["id", "source", "status", "text", "seq", "model_version", "error", "created_at", "finished_at"]


class ReviewOutputSerializer(serializers.ModelSerializer):
    reviewer = serializers.CharField(source="reviewer.username")

    class Meta:
        model = Review
        fields = [
            "id",
            "item",
            "reviewer",
            "decision",
            "final_text",
            "reason",
            "scores",
            "item_version",
            "time_spent_ms",
            "created_at",
        ]


class ItemOutputSerializer(serializers.ModelSerializer):
    domain = serializers.CharField(source="domain.slug")
    approvals_required = serializers.IntegerField(source="domain.approvals_required")
    lease_owner = serializers.CharField(source="lease_owner.username", default=None, allow_null=True)

    class Meta:
        model = Item
        fields = [
            "id",
            "domain",
            "status",
            "version",
            "priority",
            "external_id",
            "input",
            "metadata",
            "draft",
            "uncertainty",
            "final_text",
            "approvals",
            "approvals_required",
            "lease_owner",
            "lease_expires_at",
            "created_at",
            "updated_at",
        ]


class ItemDetailOutputSerializer(ItemOutputSerializer):
    generations = GenerationOutputSerializer(many=True)
    reviews = ReviewOutputSerializer(many=True)

    class Meta(ItemOutputSerializer.Meta):
        fields = [*ItemOutputSerializer.Meta.fields, "generations", "reviews"]


class ReviewResultSerializer(ReviewOutputSerializer):
    item = ItemOutputSerializer()


# --- Items ------------------------------------------------------------------


class ItemListCreateApi(ApiView):
    pagination_class = PageNumberPagination  # also tells the schema that the list is paginated

    class ItemCreateInputSerializer(serializers.Serializer):
        domain = StrictCharField(max_length=64)
        input = StrictCharField(max_length=settings.SORA_MAX_INPUT_CHARS)
        external_id = StrictCharField(max_length=200, required=False, allow_blank=True, default="")
        metadata = serializers.DictField(required=False, default=dict, validators=[storable_json])
        draft = StrictCharField(max_length=settings.SORA_MAX_INPUT_CHARS, required=False)
        priority = serializers.IntegerField(min_value=-100, max_value=100, required=False, default=0)

    class ItemFilterSerializer(serializers.Serializer):
        domain = serializers.CharField(max_length=64, required=False)
        status = serializers.ChoiceField(choices=Item.Status.choices, required=False)
        external_id = serializers.CharField(max_length=200, required=False)

    def get_permissions(self):
        if self.request.method == "POST":
            return [HasRole.of(roles.INTEGRATION, roles.MODEL_MANAGER)()]
        return super().get_permissions()

    @extend_schema(
        parameters=[ItemFilterSerializer],
        responses=ItemOutputSerializer(many=True),
        summary="List the items you may see",
    )
    def get(self, request):
        filters = self.ItemFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        items = selectors.item_list(user=request.user, filters=filters.validated_data)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(items, request, view=self)
        return paginator.get_paginated_response(ItemOutputSerializer(page, many=True).data)

    @extend_schema(
        request=ItemCreateInputSerializer,
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
        responses={201: ItemOutputSerializer, 422: error_response("Idempotency-Key reused with another body")},
        summary="Submit work",
    )
    def post(self, request):
        payload = self.ItemCreateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and (len(key) > 255 or "\x00" in key):
            raise ValidationError({"Idempotency-Key": ["At most 255 characters, no null characters."]})
        item, created = services.item_submit(submitted_by=request.user, idempotency_key=key, **payload.validated_data)
        headers = {} if created else {"Idempotent-Replayed": "true"}
        return Response(ItemOutputSerializer(item).data, status=status.HTTP_201_CREATED, headers=headers)


class ItemDetailApi(ApiView):
    @extend_schema(responses=ItemDetailOutputSerializer, summary="One item with its generations and reviews")
    def get(self, request, item_id: int):
        item = selectors.item_get_for_user(user=request.user, item_id=item_id, detail=True)
        return Response(ItemDetailOutputSerializer(item).data)


class ItemGenerateApi(ApiView):
    permission_classes = [HasRole.of(roles.REVIEWER, roles.MODEL_MANAGER)]

    @extend_schema(
        request=None,
        responses={
            202: GenerationOutputSerializer,
            409: error_response("A draft is being written, another reviewer holds the item, or it is decided"),
        },
        summary="Write a new draft with the domain's active model; it replaces the current draft when done",
    )
    def post(self, request, item_id: int):
        generation = services.generation_request(item_id=item_id, user=request.user)
        return Response(GenerationOutputSerializer(generation).data, status=status.HTTP_202_ACCEPTED)


# --- Queue and leases -------------------------------------------------------


class QueueClaimApi(ApiView):
    permission_classes = [HasRole.of(roles.REVIEWER)]

    class ClaimInputSerializer(serializers.Serializer):
        domain = StrictCharField(max_length=64, required=False)

    @extend_schema(
        request=ClaimInputSerializer,
        responses={200: ItemOutputSerializer, 204: OpenApiResponse(description="Nothing to claim")},
        summary="Claim the next item",
    )
    def post(self, request):
        payload = self.ClaimInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        item = services.item_claim_next(reviewer=request.user, domain=payload.validated_data.get("domain"))
        if item is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(ItemOutputSerializer(item).data)


class ItemHeartbeatApi(ApiView):
    permission_classes = [HasRole.of(roles.REVIEWER)]

    @extend_schema(
        request=None,
        responses={200: ItemOutputSerializer, 409: error_response("You hold no live lease on it")},
        summary="Extend your lease",
    )
    def post(self, request, item_id: int):
        selectors.item_get_for_user(user=request.user, item_id=item_id)
        item = services.item_heartbeat(item_id=item_id, reviewer=request.user)
        return Response(ItemOutputSerializer(item).data)


class ItemReleaseApi(ApiView):
    permission_classes = [HasRole.of(roles.REVIEWER)]

    class ReleaseInputSerializer(serializers.Serializer):
        skip = serializers.BooleanField(
            required=False, default=False, help_text="Give it to the others only: you are not offered it again."
        )

    @extend_schema(
        request=ReleaseInputSerializer,
        responses={200: ItemOutputSerializer, 409: error_response("You hold no live lease on it")},
        summary="Give the item back",
    )
    def post(self, request, item_id: int):
        selectors.item_get_for_user(user=request.user, item_id=item_id)
        payload = self.ReleaseInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        item = services.item_release(item_id=item_id, reviewer=request.user, **payload.validated_data)
        return Response(ItemOutputSerializer(item).data)


# --- Reviews ----------------------------------------------------------------


class ItemReviewCreateApi(ApiView):
    permission_classes = [HasRole.of(roles.REVIEWER)]

    class ReviewInputSerializer(serializers.Serializer):
        decision = serializers.ChoiceField(choices=Review.Decision.choices)
        version = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
        final_text = StrictCharField(max_length=settings.SORA_MAX_INPUT_CHARS, required=False, trim_whitespace=False)
        reason = StrictCharField(max_length=5000, required=False, allow_blank=True, default="")
        scores = serializers.DictField(
            child=serializers.JSONField(), required=False, default=dict, validators=[storable_json]
        )

        def validate_final_text(self, value: str) -> str:
            if not value.strip():
                raise serializers.ValidationError("The approved text may not be blank.")
            return value

    @extend_schema(
        request=ReviewInputSerializer,
        responses={
            201: ReviewResultSerializer,
            409: error_response("A stale `version`, or no live lease: nothing was written"),
        },
        summary="Approve or reject",
    )
    def post(self, request, item_id: int):
        selectors.item_get_for_user(user=request.user, item_id=item_id)
        payload = self.ReviewInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        review = services.review_submit(item_id=item_id, reviewer=request.user, **payload.validated_data)
        return Response(ReviewResultSerializer(review).data, status=status.HTTP_201_CREATED)
