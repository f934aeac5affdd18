from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.settings import api_settings


class AuthTokenApi(ObtainAuthToken):
    """`{"username", "password"}` → `{"token"}` for `Authorization: Token <key>`."""

    parser_classes = api_settings.DEFAULT_PARSER_CLASSES
    renderer_classes = api_settings.DEFAULT_RENDERER_CLASSES

    @extend_schema(
        request=inline_serializer(
            "AuthTokenInput", {"username": serializers.CharField(), "password": serializers.CharField()}
        ),
        responses=inline_serializer("AuthTokenOutput", {"token": serializers.CharField()}),
        summary="Get an API token",
    )
    def post(self, request, *args, **kwargs):
        return super().post(request, *args, **kwargs)
