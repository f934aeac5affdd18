"""`/ws/items/{id}/`: the live channel of PRODUCT.md §6.

The consumer is thin: reads and writes go through collab.services and the
annotations services; it only joins the item's group and relays what the
group carries. Origin is checked by AllowedHostsOriginValidator (asgi.py),
the session by AuthMiddlewareStack, the domain permission by the
`item_get_for_user` selector.
"""

import json
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from annotations import roles
from annotations.exceptions import SoraError
from annotations.services.generation import generation_cancel, generation_request
from collab import services
from collab.events import item_group
from models_app.finetuning import job_group, job_state
from models_app.selectors import job_get

logger = logging.getLogger(__name__)


class ItemConsumer(AsyncJsonWebsocketConsumer):
    item_id: int
    group: str
    # The stream being followed — (generation id, attempt) — and the last chunk sent; chunks up to it are
    # in the snapshot already. A worker lost mid-draft restarts it as a new attempt, from seq 1.
    stream: tuple[int | None, int] = (None, 0)
    seq: int = 0

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept(): the handshake is refused (HTTP 403)
            return
        self.item_id = int(self.scope["url_route"]["kwargs"]["item_id"])
        self.group = item_group(self.item_id)
        # Join first, read second: a chunk stored after the read still arrives through the group.
        await self.channel_layer.group_add(self.group, self.channel_name)
        try:
            snapshot = await database_sync_to_async(services.viewer_join)(
                user=user, item_id=self.item_id, channel_name=self.channel_name
            )
        except SoraError:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await self.close()
            return
        self.stream, self.seq = (snapshot["generation_id"], snapshot["attempt"]), snapshot["seq"]
        await self.accept()
        await self.send_json(snapshot)
        await self.channel_layer.group_send(self.group, {"type": "presence", "viewers": snapshot["viewers"]})

    async def disconnect(self, code: int) -> None:
        if not hasattr(self, "group"):
            return
        await self.channel_layer.group_discard(self.group, self.channel_name)
        if await database_sync_to_async(services.viewer_leave)(channel_name=self.channel_name) is not None:
            viewers = await database_sync_to_async(services.viewers_of)(self.item_id)
            await self.channel_layer.group_send(self.group, {"type": "presence", "viewers": viewers})

    # --- client → server ----------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs) -> None:
        try:
            content = json.loads(text_data or "")
        except (json.JSONDecodeError, RecursionError):
            await self.send_json({"type": "error", "message": "Messages must be JSON objects.", "code": "invalid"})
            return
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs) -> None:
        action = content.get("action") if isinstance(content, dict) else None
        handlers = {"generate": generation_request, "cancel": generation_cancel}
        if not isinstance(action, str) or action not in handlers:
            await self.send_json(
                {
                    "type": "error",
                    "message": 'Unknown action; send {"action": "generate"} or "cancel".',
                    "code": "invalid",
                }
            )
            return
        user = self.scope["user"]
        roles.forget_cached_roles(user)  # this user object lives as long as the socket
        try:
            await database_sync_to_async(handlers[action])(item_id=self.item_id, user=user)
        except SoraError as exc:
            await self.send_json({"type": "error", "message": exc.message, "code": exc.code})

    # --- group → client ------------------------------------------------------

    async def tokens(self, event: dict) -> None:
        stream = (event["generation_id"], event["attempt"])
        if stream != self.stream:
            if event["seq"] != 1:
                return  # a chunk of a stream this viewer does not follow
            self.stream, self.seq = stream, 0  # a new generation, or a new attempt, starts: the client starts over
        if event["seq"] <= self.seq:
            return  # already in the snapshot
        self.seq = event["seq"]
        await self.send_json({"type": "tokens", "seq": event["seq"], "text": event["text"]})

    async def done(self, event: dict) -> None:
        self.seq = event["seq"]
        await self.send_json(
            {key: event[key] for key in ("seq", "text", "generation_id", "model_version")} | {"type": "done"}
        )

    async def error(self, event: dict) -> None:
        await self.send_json({"type": "error", "message": event["message"], "code": event.get("code", "generation")})

    async def presence(self, event: dict) -> None:
        await self.send_json({"type": "presence", "viewers": event["viewers"]})

    async def item_status(self, event: dict) -> None:
        await self.send_json({"type": "item", "status": event["status"], "version": event["version"]})


class JobConsumer(AsyncJsonWebsocketConsumer):
    """`/ws/jobs/{id}/`: a fine-tune job's progress, live (PRODUCT.md §6), for model managers.

    On connect: {"type": "snapshot", …the job's state}; then {"type": "progress", …} as the
    worker reports (step, loss, tokens/s, ETA, status, outcome)."""

    group: str

    async def connect(self) -> None:
        user = self.scope.get("user")
        job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        if user is None or not user.is_authenticated or not await database_sync_to_async(roles.is_manager)(user):
            await self.close()
            return
        self.group = job_group(job_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        try:
            job = await database_sync_to_async(job_get)(job_id=job_id)
        except SoraError:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await self.close()
            return
        await self.accept()
        await self.send_json({"type": "snapshot", **await database_sync_to_async(job_state)(job)})

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        await self.send_json({"type": "error", "message": "This channel only reports progress.", "code": "invalid"})

    async def job_progress(self, event: dict) -> None:
        await self.send_json({**{k: v for k, v in event.items() if k != "type"}, "type": "progress"})
