import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer


def test_healthz_answers_without_auth(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_each_dependency(client, db):
    response = client.get("/readyz")

    assert response.status_code == 200, response.json()
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "channel_layer": "ok"}


def test_readyz_says_which_dependency_is_down(client, db, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["broker"].startswith("error")
    assert response.json()["checks"]["database"] == "ok"


@pytest.mark.redis
def test_redis_channel_layer_carries_a_message(settings):
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    layer = get_channel_layer()

    async def roundtrip():
        channel = await layer.new_channel()
        await layer.group_add("health-test", channel)
        await layer.group_send("health-test", {"type": "probe", "text": "hello"})
        message = await layer.receive(channel)
        await layer.group_discard("health-test", channel)
        return message

    assert async_to_sync(roundtrip)() == {"type": "probe", "text": "hello"}


@pytest.mark.django_db
def test_the_container_health_check_is_answered_under_production_rules(client, settings):
    """The compose health check asks http://127.0.0.1:8000/readyz: a host production does not allow, over http."""
    settings.ALLOWED_HOSTS = ["sora.example.org"]
    settings.SECURE_SSL_REDIRECT = True

    assert client.get("/healthz", HTTP_HOST="127.0.0.1:8000").status_code == 200
    assert client.get("/readyz", HTTP_HOST="127.0.0.1:8000").status_code in (200, 503)
    # Everything else still obeys them.
    assert client.get("/api/schema/", HTTP_HOST="127.0.0.1:8000").status_code == 400
    assert client.get("/api/schema/", HTTP_HOST="sora.example.org").status_code == 301
