from django.urls import re_path

from .consumers import ItemConsumer, JobConsumer

websocket_urlpatterns = [
    re_path(r"^ws/items/(?P<item_id>[0-9]{1,18})/$", ItemConsumer.as_asgi()),
    re_path(r"^ws/jobs/(?P<job_id>[0-9]{1,18})/$", JobConsumer.as_asgi()),
]
