from django.conf import settings
from django.db import models


class Viewer(models.Model):
    """One open WebSocket on an item: who is looking at it right now (presence, PRODUCT.md §6).

    A row lives as long as its connection; rows a crashed server left behind
    are removed by the periodic `collab.viewers_prune` task.
    """

    item = models.ForeignKey("annotations.Item", on_delete=models.CASCADE, related_name="viewers")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    channel_name = models.CharField(max_length=200, unique=True)
    connected_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.user} on item {self.item_id}"
