from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.settings import api_settings

from annotations.services.audit import auth_event_record

from .api_errors import ApiSchema
from .throttling import login_success_record, login_wait_seconds, wait_message


class UsernameInput(serializers.Serializer):
    username = serializers.CharField()  # DRF's CharField refuses NUL and surrogate characters


class AuthTokenApi(ObtainAuthToken):
    """`{"username", "password"}` → `{"token"}` for `Authorization: Token <key>`."""

    parser_classes = api_settings.DEFAULT_PARSER_CLASSES
    renderer_classes = api_settings.DEFAULT_RENDERER_CLASSES
    schema = ApiSchema()  # ObtainAuthToken is not an ApiView: its errors are documented the same way
    throttle_classes = api_settings.DEFAULT_THROTTLE_CLASSES  # DRF's own view has none
    # Anyone, as in DRF's view (which says so with an empty list); AllowAny also tells the schema that no
    # credentials are needed to get a token.
    permission_classes = [AllowAny]

    @extend_schema(
        request=inline_serializer(
            "AuthTokenInput", {"username": serializers.CharField(), "password": serializers.CharField()}
        ),
        responses=inline_serializer("AuthTokenOutput", {"token": serializers.CharField()}),
        summary="Get an API token",
    )
    def post(self, request, *args, **kwargs):
        username = request.data.get("username") if isinstance(request.data, dict) else None
        # The serializer's CharField takes numbers as names too: they are held back like any other name.
        if isinstance(username, (int, float)) and not isinstance(username, bool):
            username = str(username)
        if isinstance(username, str):
            # The name's form first, as the sign-in page's form does: the throttle hashes the name and audits it
            # as typed, and a NUL or a lone surrogate (which no account's name holds) was a 500 there.
            UsernameInput(data={"username": username}).is_valid(raise_exception=True)
        if isinstance(username, str) and (wait := login_wait_seconds(username, request)):
            raise exceptions.Throttled(wait=wait, detail=wait_message(wait))
        payload = self.get_serializer(data=request.data)
        payload.is_valid(raise_exception=True)  # a wrong password is audited by the auth signal
        user = payload.validated_data["user"]
        token, _ = Token.objects.get_or_create(user=user)
        login_success_record(user.get_username(), request)
        auth_event_record(verb="auth.token_issued", user=user, username=user.get_username(), request=request)
        return Response({"token": token.key})
