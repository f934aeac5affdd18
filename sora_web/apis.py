from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.response import Response
from rest_framework.settings import api_settings

from annotations.services.audit import auth_event_record


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
        payload = self.get_serializer(data=request.data)
        payload.is_valid(raise_exception=True)  # a wrong password is audited by the auth signal
        user = payload.validated_data["user"]
        token, _ = Token.objects.get_or_create(user=user)
        auth_event_record(verb="auth.token_issued", user=user, username=user.get_username(), request=request)
        return Response({"token": token.key})
