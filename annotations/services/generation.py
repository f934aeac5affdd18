"""Drafts written by a model: request, run (in the inference worker), cancel.

Item status: queued → generating → ready, or failed with the reason. An item
being reviewed keeps its lease and status while its holder regenerates it;
the new draft bumps its version.

Streaming (PRODUCT.md §6): decoded text is batched into chunks (every
SORA_STREAM_FLUSH_MS or SORA_STREAM_FLUSH_PIECES pieces, whichever comes
first) so the channel layer sees a few messages a second, not one per token.
Each chunk is appended to the Generation row *before* it is published, with
its number in `seq`, so a viewer who joins late reads the text so far and
continues with the next chunk without a gap.
"""

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from annotations import roles
from annotations.exceptions import InvalidTransition, NotAllowed
from annotations.models import Generation, Item
from annotations.selectors import domains_reviewable_by, item_get_for_user
from collab.events import item_group, send_event, send_event_on_commit
from models_app.inference import GenerationFailed, GenerationOutput, get_backend
from models_app.inference.prompts import sampling_from
from models_app.retrieval import prompt_for_item
from models_app.selectors import active_version_for

from .audit import audit_record, item_state
from .claims import item_status_changed

logger = logging.getLogger(__name__)

# A generation whose worker died this many times is failed instead of retried.
MAX_ATTEMPTS = 3


# --- requests (web) ---------------------------------------------------------


def _check_may_generate(user: AbstractBaseUser, item: Item) -> None:
    if roles.is_manager(user) or roles.is_admin(user):
        return
    if roles.has_role(user, roles.REVIEWER) and domains_reviewable_by(user=user).filter(pk=item.domain_id).exists():
        return
    raise NotAllowed("Only a reviewer of this domain or a model manager may generate its drafts.")


def generation_queue(*, item: Item, requested_by: AbstractBaseUser | None) -> Generation:
    """Create a queued Generation and send it to the inference worker once the transaction commits."""
    generation = Generation.objects.create(
        item=item, source=Generation.Source.MODEL, status=Generation.Status.QUEUED, requested_by=requested_by
    )
    transaction.on_commit(lambda: _dispatch(generation.pk))
    return generation


def _dispatch(generation_id: int) -> None:
    """Hand the generation to the broker. If the broker is down the request still succeeds:
    `dispatched_at` stays empty and generations_sweep sends it again."""
    from annotations.tasks import generate_draft

    try:
        generate_draft.delay(generation_id)
    except Exception:  # noqa: BLE001 — any broker failure; the sweep retries
        logger.warning("could not queue generation %s; the periodic sweep will retry", generation_id, exc_info=True)
        return
    Generation.objects.filter(pk=generation_id, dispatched_at__isnull=True).update(dispatched_at=timezone.now())


def _check_may_change_draft(user: AbstractBaseUser, item: Item) -> None:
    if item.status == Item.Status.IN_REVIEW and item.lease_owner_id != user.pk:
        raise InvalidTransition("Another reviewer holds this item.", status=item.status, version=item.version)


@transaction.atomic
def generation_request(*, item_id: int, user: AbstractBaseUser) -> Generation:
    """Ask for a new draft; it replaces the current one when done. 409 while one is already being written."""
    item = item_get_for_user(user=user, item_id=item_id)
    _check_may_generate(user, item)
    item = Item.objects.select_for_update().get(pk=item.pk)
    if item.generations.filter(status__in=Generation.LIVE_STATUSES).exists():
        raise InvalidTransition("A draft is already being written for this item.", status=item.status)
    _check_may_change_draft(user, item)
    if item.status in (Item.Status.APPROVED, Item.Status.REJECTED):
        raise InvalidTransition(f"The item is {item.status}; its draft can no longer change.", status=item.status)
    if item.approvals:
        # The approvals given so far were given to this text: a new draft would need them all again.
        raise InvalidTransition("The item already has an approval; its draft can no longer change.", status=item.status)
    before = item_state(item)
    if item.status != Item.Status.IN_REVIEW:
        item.status = Item.Status.QUEUED
        item.version += 1
        item.save(update_fields=["status", "version", "updated_at"])
    item_status_changed(item)  # first: viewers hear "queued" before the worker's first chunk
    generation = generation_queue(item=item, requested_by=user)
    audit_record(actor=user, verb="item.generation_requested", target=item, before=before, after=item_state(item))
    return generation


@transaction.atomic
def generation_cancel(*, item_id: int, user: AbstractBaseUser) -> Generation | None:
    """Stop the draft being written (the worker stops within one decoding step); None when there is none."""
    item = item_get_for_user(user=user, item_id=item_id)
    _check_may_generate(user, item)
    _check_may_change_draft(user, item)
    generation = (
        Generation.objects.select_for_update()
        .filter(item_id=item.pk, status__in=Generation.LIVE_STATUSES)
        .order_by("-id")
        .first()
    )
    if generation is None:
        return None
    generation.cancel_requested_at = timezone.now()
    generation.save(update_fields=["cancel_requested_at"])
    if generation.status == Generation.Status.QUEUED:
        # No worker has it yet: end it here (the worker will find it cancelled and skip it).
        _end(generation, status=Generation.Status.CANCELLED, error="Cancelled before it started.", actor=user)
    elif _worker_silent(generation):
        # Its worker died: nobody will read the flag, so end it here.
        _end(generation, status=Generation.Status.CANCELLED, error="Cancelled (its worker had stopped).", actor=user)
    audit_record(actor=user, verb="generation.cancel_requested", target=generation, after={"item": item.pk})
    return generation


# --- the run (inference worker) ----------------------------------------------


class GenerationTakenAway(Exception):
    """The generation stopped streaming under its worker: the sweep gave up on it, or it was cancelled for it."""


class ChunkStream:
    """Batches decoded text into numbered chunks, each stored and then published."""

    def __init__(self, generation: Generation) -> None:
        self.generation_id = generation.pk
        self.attempt = generation.attempts  # a restarted generation streams from seq 1 again, as a new attempt
        self.group = item_group(generation.item_id)
        self.flush_seconds = settings.SORA_STREAM_FLUSH_MS / 1000
        self.flush_pieces = settings.SORA_STREAM_FLUSH_PIECES
        self.pending: list[str] = []
        self.sent: list[str] = []
        self.seq = 0
        self.last_flush = time.monotonic()
        self.checked_at = 0.0  # when the database last told us whether a cancel was asked for
        self.cancel_seen = False

    @property
    def text(self) -> str:
        return "".join(self.sent) + "".join(self.pending)

    def add(self, piece: str) -> None:
        self.pending.append(piece)
        # The first chunk goes at once: time to first text is what a watching reviewer feels most.
        due = time.monotonic() - self.last_flush >= self.flush_seconds
        if self.seq == 0 or len(self.pending) >= self.flush_pieces or due:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        chunk = "".join(self.pending)
        self.pending.clear()
        self.seq += 1
        streaming = Generation.objects.filter(pk=self.generation_id, status=Generation.Status.STREAMING)
        append = {"text": Concat(F("text"), Value(chunk)), "seq": self.seq, "heartbeat_at": timezone.now()}
        # The store doubles as the cancel check: it matches only while nobody asked to cancel.
        if not streaming.filter(cancel_requested_at__isnull=True).update(**append):
            if not streaming.update(**append):
                raise GenerationTakenAway(self.generation_id)
            self.cancel_seen = True
        self.checked_at = time.monotonic()
        self.sent.append(chunk)
        send_event(
            self.group,
            "tokens",
            {"seq": self.seq, "text": chunk, "generation_id": self.generation_id, "attempt": self.attempt},
        )
        self.last_flush = time.monotonic()


class CancelPoll:
    """Asked after every decoding step: has anyone asked to cancel? The database is read at most every
    `every` seconds, and not at all while chunks are being stored (each store checks the flag too)."""

    def __init__(self, stream: ChunkStream, every: float = 0.05) -> None:
        self.stream = stream
        self.every = every

    def __call__(self) -> bool:
        stream = self.stream
        if not stream.cancel_seen and time.monotonic() - stream.checked_at >= self.every:
            stream.checked_at = time.monotonic()
            stream.cancel_seen = Generation.objects.filter(
                pk=stream.generation_id, cancel_requested_at__isnull=False
            ).exists()
        return stream.cancel_seen


def generation_run(generation_id: int) -> None:
    """Write the draft of a queued Generation, streaming it to the item's viewers."""
    generation = _start(generation_id)
    if generation is None:
        return
    item, version = generation.item, generation.model_version
    stream = ChunkStream(generation)
    try:
        output = get_backend().generate(
            version.model_ref(),
            prompt_for_item(item=item, version=version),  # the domain's prompt, after its nearest approved examples
            sampling_from(item.domain.sampling),
            on_text=stream.add,
            should_stop=CancelPoll(stream),
        )
        stream.flush()
        _finish(generation, stream, output)
    except GenerationTakenAway:
        logger.info("generation %s was ended while its worker wrote it; stopping", generation.pk)
    except GenerationFailed as exc:
        _fail(generation, str(exc))
    except Exception as exc:  # noqa: BLE001 — any failure must end the stream with an error, never hang it
        logger.exception("generation %s failed", generation.pk)
        _fail(generation, f"Generation failed ({type(exc).__name__}); the worker log has the details.")


def _start(generation_id: int) -> Generation | None:
    """Claim the generation for this worker; None when there is nothing to do."""
    with transaction.atomic():
        generation = Generation.objects.select_for_update().filter(pk=generation_id).first()
        if generation is None or generation.status not in Generation.LIVE_STATUSES:
            return None  # cancelled before it started, or finished by an earlier delivery
        generation.item = Item.objects.select_related("domain").get(pk=generation.item_id)
        if generation.status == Generation.Status.STREAMING and generation.attempts >= MAX_ATTEMPTS:
            _end(generation, status=Generation.Status.FAILED, error=f"Its worker was lost {generation.attempts} times.")
            return None
        if generation.cancel_requested_at:
            _end(generation, status=Generation.Status.CANCELLED, error="Cancelled before it started.")
            return None
        version = active_version_for(domain_id=generation.item.domain_id)
        if version is None:
            _end(
                generation,
                status=Generation.Status.FAILED,
                error=f"No active model for the domain {generation.item.domain.slug!r}; run `manage.py prepare_model`.",
            )
            return None
        # A generation found streaming was started by a worker that died: start it again from nothing.
        generation.status, generation.text, generation.seq = Generation.Status.STREAMING, "", 0
        generation.model_version, generation.started_at = version, timezone.now()
        generation.heartbeat_at = generation.started_at
        generation.attempts += 1
        generation.save(
            update_fields=["status", "text", "seq", "model_version", "started_at", "heartbeat_at", "attempts"]
        )
        item = Item.objects.select_for_update().get(pk=generation.item_id)
        if item.status == Item.Status.QUEUED:
            before = item_state(item)
            item.status = Item.Status.GENERATING
            item.version += 1
            item.save(update_fields=["status", "version", "updated_at"])
            audit_record(actor=None, verb="item.generating", target=item, before=before, after=item_state(item))
            item_status_changed(item)
    generation.model_version = version
    return generation


def _finish(generation: Generation, stream: ChunkStream, output: GenerationOutput) -> None:
    if output.cancelled:
        _end(generation, status=Generation.Status.CANCELLED, error="Cancelled.", text=stream.text)
        return
    with transaction.atomic():
        item = Item.objects.select_for_update().get(pk=generation.item_id)
        if not Generation.objects.filter(pk=generation.pk, status=Generation.Status.STREAMING).exists():
            raise GenerationTakenAway(generation.pk)
        generation.status, generation.text = Generation.Status.DONE, stream.text
        generation.token_logprobs, generation.finished_at = output.token_logprobs, timezone.now()
        generation.save(update_fields=["status", "text", "token_logprobs", "finished_at"])
        if item.status in (Item.Status.APPROVED, Item.Status.REJECTED) or item.approvals:
            # Decided (or approved once) while this draft was being written: that stands, and the viewers hear why.
            decided = item.status if item.status in (Item.Status.APPROVED, Item.Status.REJECTED) else "approved once"
            message = f"The item was {decided} while this draft was written; it was not used."
            payload = {"message": message, "code": "discarded", "generation_id": generation.pk}
            send_event_on_commit(item_group(item.pk), "error", payload)
            return
        before = item_state(item)
        item.draft, item.uncertainty = generation.text, output.uncertainty
        if item.status != Item.Status.IN_REVIEW:
            item.status = Item.Status.READY
        item.version += 1
        item.save(update_fields=["draft", "uncertainty", "status", "version", "updated_at"])
        audit_record(
            actor=None,
            verb="item.generated",
            target=item,
            before=before,
            after={**item_state(item), "generation": generation.pk, "model_version": generation.model_version_id},
        )
        item_status_changed(item)
        send_event_on_commit(
            item_group(item.pk),
            "done",
            {
                "seq": stream.seq,
                "text": generation.text,
                "generation_id": generation.pk,
                "model_version": generation.model_version.name,
            },
        )


def _fail(generation: Generation, message: str) -> None:
    try:
        _end(generation, status=Generation.Status.FAILED, error=message)
    except Exception:
        # The database failed too: the viewers still hear of it (the sweep fails the generation later).
        send_event(item_group(generation.item_id), "error", {"message": message, "generation_id": generation.pk})
        raise


def _end(
    generation: Generation,
    *,
    status: str,
    error: str,
    text: str | None = None,
    actor: AbstractBaseUser | None = None,
) -> None:
    """Close a generation that will not become the draft; the item falls back to its old draft, or `failed`."""
    with transaction.atomic():
        item = Item.objects.select_for_update().get(pk=generation.item_id)
        if Generation.objects.get(pk=generation.pk).status not in Generation.LIVE_STATUSES:
            return  # ended meanwhile (its worker finished, or another path ended it)
        generation.status, generation.error, generation.finished_at = status, error, timezone.now()
        fields = ["status", "error", "finished_at"]
        if text is not None:
            generation.text = text
            fields.append("text")
        generation.save(update_fields=fields)
        if item.status in (Item.Status.QUEUED, Item.Status.GENERATING):
            before = item_state(item)
            item.status = Item.Status.READY if item.draft else Item.Status.FAILED
            item.version += 1
            item.save(update_fields=["status", "version", "updated_at"])
            verb = "item.generation_failed" if status == Generation.Status.FAILED else "item.generation_cancelled"
            audit_record(actor=actor, verb=verb, target=item, before=before, after={**item_state(item), "error": error})
            item_status_changed(item)
        # Every stream ends with `done` or `error` (PRODUCT.md §6), also for an item in review, whose status
        # does not change here.
        code = "cancelled" if status == Generation.Status.CANCELLED else "generation"
        payload = {"message": error, "code": code, "generation_id": generation.pk}
        send_event_on_commit(item_group(item.pk), "error", payload)


# --- the sweep (beat) ----------------------------------------------------------


def _worker_silent(generation: Generation) -> bool:
    """A streaming generation whose worker has not stored a chunk (or started) for SORA_GENERATION_STALE_SECONDS."""
    limit = timezone.now() - timedelta(seconds=settings.SORA_GENERATION_STALE_SECONDS)
    return generation.status == Generation.Status.STREAMING and (generation.heartbeat_at or limit) <= limit


def generations_sweep() -> dict:
    """Send again what the broker never took; fail what a dead worker left streaming. Run periodically."""
    now = timezone.now()
    undelivered = Generation.objects.filter(
        status=Generation.Status.QUEUED,
        dispatched_at__isnull=True,
        cancel_requested_at__isnull=True,
        created_at__lte=now - timedelta(seconds=30),
    ).values_list("pk", flat=True)
    resent = 0
    for generation_id in list(undelivered[:500]):
        _dispatch(generation_id)
        resent += 1
    stale = Generation.objects.filter(
        status=Generation.Status.STREAMING,
        heartbeat_at__lte=now - timedelta(seconds=settings.SORA_GENERATION_STALE_SECONDS),
    )
    failed = 0
    for generation in list(stale[:500]):
        _end(generation, status=Generation.Status.FAILED, error="The worker writing it stopped responding.")
        failed += 1
    return {"resent": resent, "failed": failed}
