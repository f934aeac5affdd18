# The item and job consumers (PRODUCT.md §6) arrive with live streaming.
websocket_urlpatterns: list = []
