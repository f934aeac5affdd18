"""The live channel `/ws/items/{id}/` (PRODUCT.md §6) through the real ASGI application.

Every test talks to `sora_web.asgi.application`, so the Origin check
(AllowedHostsOriginValidator) and the session login (AuthMiddlewareStack) are
part of what is tested. The tests are sync functions that run their async body
with `async_to_sync` (pytest-asyncio is not a dependency); the consumer's
`database_sync_to_async` calls then run on the test's own thread and database
connection. Every receive has a bounded timeout, so a missing message fails
the test instead of hanging it.
"""

from contextlib import asynccontextmanager

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from annotations.models import Generation, Item
from annotations.services import item_claim_next
from annotations.services.generation import ChunkStream
from collab.events import item_group, send_event
from collab.models import Viewer
from models_app.inference import GenerationOutput
from tests.factories import DomainFactory, ItemFactory, reviewer_factory


@pytest.fixture(autouse=True)
def in_memory_channel_layer(settings):
    """These tests look inside the layer; the Redis layer is exercised end to end in tests/test_demo.py."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


pytestmark = pytest.mark.django_db(transaction=True)

ALLOWED_ORIGIN = b"http://localhost"  # "localhost" is in ALLOWED_HOSTS of the test settings
TIMEOUT = 5  # seconds for one message; nothing here should take more than a fraction of it
GENERATION_TIMEOUT = 60  # the first message after "generate" waits for the whole eager run (and the model load)
DRAFT = "Hello, your parcel is on its way."


def application():
    from sora_web.asgi import application

    return application


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def communicator(item_id: int, *, user=None, origin: bytes | None = ALLOWED_ORIGIN) -> WebsocketCommunicator:
    """A client for the item's channel, logged in as `user` (a real session cookie) and sending `origin`."""
    headers = []
    if origin is not None:
        headers.append((b"origin", origin))
    if user is not None:
        cookie = await database_sync_to_async(session_cookie)(user)
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketCommunicator(application(), f"/ws/items/{item_id}/", headers=headers)


async def try_connect(item_id: int, **kwargs) -> tuple[bool, object]:
    """(accepted, subprotocol or close code): the handshake alone, for connections that should be refused."""
    comm = await communicator(item_id, **kwargs)
    accepted, detail = await comm.connect(timeout=TIMEOUT)
    if accepted:
        await comm.disconnect(timeout=TIMEOUT)
    return accepted, detail


@asynccontextmanager
async def connected(comm: WebsocketCommunicator):
    """An accepted connection, closed again at the end (also when the test fails)."""
    accepted, _ = await comm.connect(timeout=TIMEOUT)
    assert accepted, "the connection was refused"
    try:
        yield comm
    finally:
        await comm.disconnect(timeout=TIMEOUT)


async def receive(comm: WebsocketCommunicator, timeout: float = TIMEOUT) -> dict:
    return await comm.receive_json_from(timeout=timeout)


async def receive_until(comm: WebsocketCommunicator, message_type: str, timeout: float = TIMEOUT) -> list[dict]:
    """Everything received up to and including the first message of `message_type`."""
    messages = [await receive(comm, timeout)]
    while messages[-1]["type"] != message_type:
        messages.append(await receive(comm, timeout))
    return messages


async def drain(comm: WebsocketCommunicator) -> list[dict]:
    """What else arrives until the connection has been quiet for a moment."""
    messages = []
    while not await comm.receive_nothing(timeout=0.3):
        messages.append(await receive(comm))
    return messages


def presence(*usernames: str) -> dict:
    return {"type": "presence", "viewers": [{"username": name} for name in usernames]}


def run(body):
    """Run the async test body to its end and return what it returns."""
    # The in-memory layer is one object for the whole process: start each test from empty queues.
    async_to_sync(get_channel_layer().flush)()
    return async_to_sync(body)()


def viewer_count(item: Item) -> int:
    return Viewer.objects.filter(item=item).count()


def push(stream: ChunkStream, piece: str) -> None:
    """Store and publish `piece` as exactly one chunk (as the worker does, without waiting for the batch timer)."""
    stream.add(piece)
    stream.flush()


# --- who may connect ---------------------------------------------------------


def test_anonymous_connection_is_refused(item):
    async def body():
        accepted, _ = await try_connect(item.pk, user=None)
        assert accepted is False

    run(body)
    assert viewer_count(item) == 0


def test_connection_from_a_foreign_origin_is_refused(reviewer, item):
    async def body():
        accepted, _ = await try_connect(item.pk, user=reviewer, origin=b"https://evil.example")
        assert accepted is False

    run(body)
    assert viewer_count(item) == 0


def test_connection_without_an_origin_header_is_refused(reviewer, item):
    async def body():
        accepted, _ = await try_connect(item.pk, user=reviewer, origin=None)
        assert accepted is False

    run(body)
    assert viewer_count(item) == 0


def test_reviewer_not_granted_the_items_domain_is_refused(item):
    outsider = reviewer_factory(DomainFactory(), username="otto")

    async def body():
        accepted, _ = await try_connect(item.pk, user=outsider)
        assert accepted is False

    run(body)
    assert viewer_count(item) == 0


def test_connection_to_a_nonexistent_item_is_refused(reviewer, item):
    async def body():
        accepted, _ = await try_connect(item.pk + 1000, user=reviewer)
        assert accepted is False

    run(body)
    assert Viewer.objects.count() == 0


def test_a_refused_connection_does_not_stay_in_the_items_group(reviewer, item):
    """The consumer joins the group before the permission check; a refusal must leave it again."""
    outsider = reviewer_factory(DomainFactory(), username="otto")

    async def body():
        accepted, _ = await try_connect(item.pk, user=outsider)
        assert accepted is False
        async with connected(await communicator(item.pk, user=reviewer)) as comm:
            await receive(comm)  # snapshot
            await receive(comm)  # presence
        assert get_channel_layer().groups.get(item_group(item.pk), {}) == {}

    run(body)


# --- snapshot and presence -----------------------------------------------------


def test_connect_sends_a_snapshot_of_the_item_first(reviewer, item):
    submitted = item.generations.get()

    async def body():
        async with connected(await communicator(item.pk, user=reviewer)) as comm:
            assert await receive(comm) == {
                "type": "snapshot",
                "status": "ready",
                "version": 1,
                "text": DRAFT,
                "seq": 0,
                "streaming": False,
                "lease_owner": None,
                "generation_id": submitted.pk,
                "attempt": 0,
                "viewers": [{"username": "rita"}],
            }
            assert await receive(comm) == presence("rita")
            assert await comm.receive_nothing(timeout=0.2)

    run(body)
    assert viewer_count(item) == 0  # the row went with the connection


def test_second_viewer_joining_and_leaving_updates_presence_of_the_first(reviewer, second_reviewer, item):
    async def body():
        async with connected(await communicator(item.pk, user=reviewer)) as first:
            assert (await receive(first))["viewers"] == [{"username": "rita"}]
            assert await receive(first) == presence("rita")

            second = await communicator(item.pk, user=second_reviewer)
            async with connected(second):
                assert (await receive(second))["viewers"] == [{"username": "rita"}, {"username": "sam"}]
                assert await receive(second) == presence("rita", "sam")
                assert await receive(first) == presence("rita", "sam")

            assert await receive(first) == presence("rita")
            assert await first.receive_nothing(timeout=0.2)

    run(body)


# --- streaming: order and late join ------------------------------------------------


def test_early_viewer_gets_chunks_in_order_and_late_viewer_resumes_after_its_snapshot(
    domain, reviewer, second_reviewer
):
    item = ItemFactory(domain=domain, status=Item.Status.GENERATING, draft="", with_generation=False)
    generation = Generation.objects.create(item=item, status=Generation.Status.STREAMING)
    stream = ChunkStream(generation)
    pieces = ["Hi Dana, ", "your parcel ", "left today. ", "Sorry for ", "the delay."]
    k = 2

    async def body():
        async with connected(await communicator(item.pk, user=reviewer)) as early:
            assert (await receive(early))["seq"] == 0
            assert await receive(early) == presence("rita")

            for piece in pieces[:k]:
                await database_sync_to_async(push)(stream, piece)

            async with connected(await communicator(item.pk, user=second_reviewer)) as late:
                assert await receive(late) == {
                    "type": "snapshot",
                    "status": "generating",
                    "version": 1,
                    "text": "".join(pieces[:k]),
                    "seq": k,
                    "streaming": True,
                    "lease_owner": None,
                    "generation_id": generation.pk,
                    "attempt": 0,
                    "viewers": [{"username": "rita"}, {"username": "sam"}],
                }
                assert await receive(late) == presence("rita", "sam")

                for piece in pieces[k:]:
                    await database_sync_to_async(push)(stream, piece)

                late_messages = [await receive(late) for _ in pieces[k:]]
                assert late_messages == [
                    {"type": "tokens", "seq": seq, "text": piece} for seq, piece in enumerate(pieces, 1) if seq > k
                ]
                assert await late.receive_nothing(timeout=0.2)

            early_messages = [await receive(early) for _ in range(len(pieces) + 2)]
            chunks = [{"type": "tokens", "seq": seq, "text": piece} for seq, piece in enumerate(pieces, 1)]
            assert early_messages == [*chunks[:k], presence("rita", "sam"), *chunks[k:], presence("rita")]
            assert await early.receive_nothing(timeout=0.2)

    run(body)
    generation.refresh_from_db()
    assert (generation.text, generation.seq) == ("".join(pieces), len(pieces))


def test_a_chunk_already_in_the_snapshot_is_not_sent_again(domain, reviewer):
    """Join and store can race: a chunk stored after the group join but before the snapshot read arrives twice."""
    item = ItemFactory(domain=domain, status=Item.Status.GENERATING, draft="", with_generation=False)
    generation = Generation.objects.create(item=item, status=Generation.Status.STREAMING)
    stream = ChunkStream(generation)

    async def body():
        await database_sync_to_async(push)(stream, "one ")
        await database_sync_to_async(push)(stream, "two ")
        async with connected(await communicator(item.pk, user=reviewer)) as comm:
            snapshot = await receive(comm)
            assert (snapshot["text"], snapshot["seq"]) == ("one two ", 2)
            assert await receive(comm) == presence("rita")

            # The live copy of chunk 2, then chunk 3.
            await database_sync_to_async(send_event)(
                item_group(item.pk), "tokens", {"seq": 2, "text": "two ", "generation_id": generation.pk, "attempt": 0}
            )
            await database_sync_to_async(push)(stream, "three")

            assert await receive(comm) == {"type": "tokens", "seq": 3, "text": "three"}
            assert await comm.receive_nothing(timeout=0.2)

    run(body)


# --- item status events --------------------------------------------------------


def test_claim_by_a_reviewer_is_announced_to_viewers_as_an_item_event(reviewer, second_reviewer, item):
    async def body():
        async with connected(await communicator(item.pk, user=reviewer)) as comm:
            await receive(comm)  # snapshot
            assert await receive(comm) == presence("rita")

            claimed = await database_sync_to_async(item_claim_next)(reviewer=second_reviewer)

            assert claimed.pk == item.pk
            assert await receive(comm) == {"type": "item", "status": "in_review", "version": 2}
            assert await comm.receive_nothing(timeout=0.2)

    run(body)


# --- client actions ------------------------------------------------------------


def test_generate_action_streams_chunks_in_order_then_done_with_the_new_draft(domain, reviewer, item, tiny_model):
    domain.sampling = {"max_new_tokens": 24}
    domain.save()

    async def body():
        async with connected(await communicator(item.pk, user=reviewer)) as comm:
            await receive(comm)  # snapshot
            assert await receive(comm) == presence("rita")

            await comm.send_json_to({"action": "generate"})
            # Celery is eager in tests: the whole run happens inside the action, then its messages arrive.
            messages = await receive_until(comm, "done", timeout=GENERATION_TIMEOUT)
            return messages, await drain(comm)

    messages, after_done = run(body)

    generation = Generation.objects.get(item=item, source=Generation.Source.MODEL)
    item.refresh_from_db()
    tokens = [m for m in messages if m["type"] == "tokens"]
    done = messages[-1]
    assert len(tokens) >= 1
    assert [m["seq"] for m in tokens] == list(range(1, len(tokens) + 1))
    assert done == {
        "type": "done",
        "seq": len(tokens),
        "text": "".join(m["text"] for m in tokens),
        "generation_id": generation.pk,
        "model_version": "tiny-llama",
    }
    assert done["text"] and done["text"] != DRAFT
    assert (item.draft, item.status, item.version) == (done["text"], "ready", 4)
    assert (generation.status, generation.text, generation.seq) == ("done", done["text"], len(tokens))
    # Besides the stream only item events arrive; in version order they tell the whole story. (Their delivery
    # order is not asserted: with eager Celery the "queued" event is published after the run it announced.)
    others = [m for m in messages[:-1] + after_done if m["type"] != "tokens"]
    assert sorted(others, key=lambda m: m["version"]) == [
        {"type": "item", "status": "queued", "version": 2},
        {"type": "item", "status": "generating", "version": 3},
        {"type": "item", "status": "ready", "version": 4},
    ]


def test_generate_action_by_a_user_who_may_only_watch_gets_a_permission_error(domain, integration):
    item = ItemFactory(domain=domain, submitted_by=integration)

    async def body():
        async with connected(await communicator(item.pk, user=integration)) as comm:
            await receive(comm)  # snapshot
            assert await receive(comm) == presence("helpdesk")

            await comm.send_json_to({"action": "generate"})

            assert await receive(comm) == {
                "type": "error",
                "message": "Only a reviewer of this domain or a model manager may generate its drafts.",
                "code": "permission_denied",
            }
            assert await comm.receive_nothing(timeout=0.2)

    run(body)
    assert not Generation.objects.filter(item=item, source=Generation.Source.MODEL).exists()


def test_cancel_action_on_a_queued_generation_gives_a_cancelled_error(domain, reviewer):
    item = ItemFactory(domain=domain, status=Item.Status.QUEUED, draft="", with_generation=False)
    generation = Generation.objects.create(item=item, status=Generation.Status.QUEUED, requested_by=reviewer)

    async def body():
        async with connected(await communicator(item.pk, user=reviewer)) as comm:
            snapshot = await receive(comm)
            assert (snapshot["text"], snapshot["seq"], snapshot["generation_id"]) == ("", 0, generation.pk)
            assert await receive(comm) == presence("rita")

            await comm.send_json_to({"action": "cancel"})

            assert await receive(comm) == {"type": "item", "status": "failed", "version": 2}
            assert await receive(comm) == {
                "type": "error",
                "message": "Cancelled before it started.",
                "code": "cancelled",
            }
            assert await comm.receive_nothing(timeout=0.2)

    run(body)
    generation.refresh_from_db()
    assert generation.status == Generation.Status.CANCELLED
    assert generation.cancel_requested_at is not None


def test_unknown_action_gets_an_invalid_error_and_the_socket_stays_open(reviewer, second_reviewer, item):
    async def body():
        async with connected(await communicator(item.pk, user=reviewer)) as comm:
            await receive(comm)  # snapshot
            assert await receive(comm) == presence("rita")

            await comm.send_json_to({"action": "explode"})
            assert await receive(comm) == {
                "type": "error",
                "message": 'Unknown action; send {"action": "generate"} or "cancel".',
                "code": "invalid",
            }
            await comm.send_json_to(["not", "an", "object"])
            assert (await receive(comm))["code"] == "invalid"
            await comm.send_json_to({"action": ["generate"]})  # not a string: must not crash the consumer
            assert (await receive(comm))["code"] == "invalid"

            # Still open and still in the item's group: the next event reaches it.
            await database_sync_to_async(item_claim_next)(reviewer=second_reviewer)
            assert await receive(comm) == {"type": "item", "status": "in_review", "version": 2}

    run(body)


def test_non_json_text_gets_an_invalid_error_and_the_socket_stays_open(reviewer, second_reviewer, item):
    not_json = {"type": "error", "message": "Messages must be JSON objects.", "code": "invalid"}

    async def body():
        async with connected(await communicator(item.pk, user=reviewer)) as comm:
            await receive(comm)  # snapshot
            assert await receive(comm) == presence("rita")

            await comm.send_to(text_data="generate, please {")
            assert await receive(comm) == not_json
            await comm.send_to(bytes_data=b"\x00\x01")
            assert await receive(comm) == not_json

            await database_sync_to_async(item_claim_next)(reviewer=second_reviewer)
            assert await receive(comm) == {"type": "item", "status": "in_review", "version": 2}

    run(body)


# --- failures --------------------------------------------------------------------


class FailingBackend:
    """Streams one piece, then breaks."""

    def generate(self, model, messages, sampling, on_text, should_stop):
        on_text("Partial ")
        raise RuntimeError("the accelerator fell over")


class ScriptedBackend:
    """Streams the given pieces and returns them as the output."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def generate(self, model, messages, sampling, on_text, should_stop):
        for piece in self.pieces:
            on_text(piece)
        return GenerationOutput(text="".join(self.pieces), token_logprobs=[-0.5] * len(self.pieces))


def test_exception_inside_generation_ends_the_stream_with_an_error_and_fails_the_item(
    domain, reviewer, tiny_model, monkeypatch
):
    monkeypatch.setattr("annotations.services.generation.get_backend", lambda: FailingBackend())
    # An item without a draft (its first generation failed before), retried by its reviewer.
    item = ItemFactory(domain=domain, status=Item.Status.FAILED, draft="", with_generation=False)

    async def body():
        async with connected(await communicator(item.pk, user=reviewer)) as comm:
            await receive(comm)  # snapshot
            assert await receive(comm) == presence("rita")

            await comm.send_json_to({"action": "generate"})
            messages = await receive_until(comm, "error", timeout=TIMEOUT)
            return messages, await drain(comm)

    messages, after_error = run(body)

    generation = Generation.objects.get(item=item)
    item.refresh_from_db()
    message = "Generation failed (RuntimeError); the worker log has the details."
    stream = [m for m in messages if m["type"] != "item"]
    assert stream == [
        {"type": "tokens", "seq": 1, "text": "Partial "},
        {"type": "error", "message": message, "code": "generation"},
    ]
    assert [m for m in after_error if m["type"] != "item"] == []
    assert (item.status, item.version, item.draft) == ("failed", 4, "")
    assert (generation.status, generation.error) == ("failed", message)
    assert generation.finished_at is not None
    items = [m for m in messages + after_error if m["type"] == "item"]
    assert sorted(items, key=lambda m: m["version"]) == [
        {"type": "item", "status": "queued", "version": 2},
        {"type": "item", "status": "generating", "version": 3},
        {"type": "item", "status": "failed", "version": 4},
    ]


def test_viewer_of_a_restarted_generation_gets_all_chunks_of_the_new_attempt(
    domain, reviewer, tiny_model, monkeypatch, settings
):
    settings.SORA_STREAM_FLUSH_PIECES = 1  # one piece, one chunk
    new_pieces = ["Dear Dana, ", "the parcel ", "is here."]
    monkeypatch.setattr("annotations.services.generation.get_backend", lambda: ScriptedBackend(new_pieces))
    item = ItemFactory(domain=domain, status=Item.Status.GENERATING, draft="", with_generation=False)
    # A worker took the generation and streamed two chunks, then died (acks_late: the task is delivered again).
    generation = Generation.objects.create(item=item, status=Generation.Status.STREAMING, attempts=1)
    first_attempt = ChunkStream(generation)

    async def body():
        async with connected(await communicator(item.pk, user=reviewer)) as comm:
            await receive(comm)  # snapshot
            assert await receive(comm) == presence("rita")
            await database_sync_to_async(push)(first_attempt, "Hi ")
            await database_sync_to_async(push)(first_attempt, "there, ")
            assert [(await receive(comm))["seq"] for _ in range(2)] == [1, 2]

            # The redelivered task runs it again from nothing.
            from annotations.services.generation import generation_run

            await database_sync_to_async(generation_run)(generation.pk)
            return await receive_until(comm, "done", timeout=TIMEOUT)

    messages = run(body)

    done = messages[-1]
    tokens = [m for m in messages if m["type"] == "tokens"]
    assert done["text"] == "".join(new_pieces)
    assert [m["seq"] for m in tokens] == [1, 2, 3]
    assert "".join(m["text"] for m in tokens) == done["text"]
