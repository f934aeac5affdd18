from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from annotations.diffing import word_diff, word_edit_distance
from annotations.exceptions import InvalidInput, StaleVersion
from annotations.models import Claim, Correction, Domain, Generation, Item, Review
from models_app.datasets import training_example_record
from models_app.tasks import finetune_check_soon
from webhooks.models import Event
from webhooks.services import event_emit, item_event_data

from .audit import audit_record, item_state
from .claims import item_status_changed, lock_leased_item


def _validate_scores(domain: Domain, scores: dict) -> dict:
    allowed = set(domain.rubric_names())
    unknown = sorted(set(scores) - allowed)
    if unknown:
        raise InvalidInput("scores", f"Unknown rubric names {unknown}; this domain scores {sorted(allowed)}.")
    for name, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
            raise InvalidInput("scores", f"{name!r} must be a whole number from 1 to 5.")
    return scores


def _time_spent_ms(*, reviewer: AbstractBaseUser, claim: Claim | None, now) -> int:
    """From the claim, or from the end of the reviewer's previous item (decided, released or skipped) if that
    came later: the dashboard claims the next item while the current one is reviewed, and that wait is not
    time spent on it."""
    if claim is None:
        return 0
    # The latest few claims by claim time (an index); one of them ended last.
    recent = (
        Claim.objects.filter(reviewer=reviewer, ended_at__isnull=False)
        .exclude(end_reason=Claim.EndReason.EXPIRED)
        .order_by("-claimed_at")
        .values_list("ended_at", flat=True)[:5]
    )
    started = max([claim.claimed_at, *recent])
    return max(0, int((now - started).total_seconds() * 1000))


@transaction.atomic
def review_submit(
    *,
    item_id: int,
    reviewer: AbstractBaseUser,
    decision: str,
    version: int,
    final_text: str | None = None,
    reason: str = "",
    scores: dict | None = None,
) -> Review:
    """Approve or reject the item the reviewer holds.

    Refused with 409 and nothing written when the lease is gone or `version`
    is not the item's current version (someone changed it since).
    On approval the draft→final Correction is written; an item whose domain
    needs more approvals goes back to `ready` with this text as its working
    text, for a different reviewer.
    """
    now = timezone.now()
    item = lock_leased_item(item_id=item_id, reviewer=reviewer, now=now)
    if item.version != version:
        raise StaleVersion(
            f"The item changed since version {version}; it is now version {item.version}.",
            status=item.status,
            version=item.version,
        )
    scores = _validate_scores(item.domain, scores or {})
    if decision == Review.Decision.REJECT and not reason.strip():
        raise InvalidInput("reason", "A rejection needs a reason.")

    approving = decision == Review.Decision.APPROVE
    # Approving without text approves the working text: the first approver's, else the draft.
    if approving:
        text = final_text if final_text is not None else (item.final_text or item.draft)
    else:
        text = final_text or ""  # kept on the review: what the reviewer had when they rejected
    claim = Claim.objects.filter(item=item, ended_at__isnull=True).first()
    # The generation that wrote the draft under review: the latest finished one (failed or cancelled ones never did).
    generation = item.generations.filter(status=Generation.Status.DONE).order_by("-id").first()
    before = item_state(item)
    review = Review.objects.create(
        item=item,
        reviewer=reviewer,
        claim=claim,
        generation=generation,
        decision=decision,
        final_text=text,
        reason=reason,
        scores=scores,
        item_version=version,
        time_spent_ms=_time_spent_ms(reviewer=reviewer, claim=claim, now=now),
    )
    if claim:
        claim.ended_at, claim.end_reason = now, Claim.EndReason.REVIEWED
        claim.save(update_fields=["ended_at", "end_reason"])
    # A draft still being written for a decided item would be thrown away: stop its worker.
    item.generations.filter(status__in=Generation.LIVE_STATUSES).update(cancel_requested_at=now)

    if approving:
        Correction.objects.create(
            item=item,
            review=review,
            generation=generation,
            domain=item.domain,
            draft=item.draft,
            final=text,
            diff=word_diff(item.draft, text),
            edit_distance=word_edit_distance(item.draft, text),
            edited=text != item.draft,
        )
        item.approvals += 1
        item.final_text = text
        done = item.approvals >= item.domain.approvals_required
        item.status = Item.Status.APPROVED if done else Item.Status.READY
        verb = "item.approved" if done else "item.approval_recorded"
    else:
        item.status = Item.Status.REJECTED
        verb = "item.rejected"

    item.lease_owner = None
    item.lease_expires_at = None
    item.version += 1
    item.save(
        update_fields=["status", "approvals", "final_text", "lease_owner", "lease_expires_at", "version", "updated_at"]
    )
    if item.status == Item.Status.APPROVED:
        training_example_record(item=item)  # redacted where the domain says so
        transaction.on_commit(lambda: finetune_check_soon(item.domain_id))
    if item.status in (Item.Status.APPROVED, Item.Status.REJECTED):
        # The outbox: the deliveries commit with the decision, or not at all (redacted where the domain says so).
        event = Event.ITEM_APPROVED if item.status == Item.Status.APPROVED else Event.ITEM_REJECTED
        event_emit(event_type=event, data=lambda: item_event_data(item=item, review=review), domain=item.domain)
    audit_record(actor=reviewer, verb=verb, target=item, before=before, after={**item_state(item), "review": review.pk})
    item_status_changed(item)
    return review
