"""The claim on PostgreSQL, in one statement (two when expired leases wait).

Claiming is the hottest write in Sora: every approve→next runs it, from many
reviewers at once. Through the ORM it costs six round trips and most of its
time in Python; here it is one. It does what the ORM path in claims.py does
(SQLite runs that one; CI runs the suite on both databases, so both are tested):

1. SWEEP_SQL, only when the claim's domain query saw expired leases, hands
   back up to `sweep_limit` of them (item → ready, open claim ended as expired,
   audited), skipping rows other claims hold. It is its own statement so that
   the items it hands back are candidates for step 2 (all parts of one
   statement share one snapshot); the two then run in one transaction.
2. LEASE_SQL locks the best ready item — priority, then age, then id — that
   this reviewer has not already approved (nor skipped: those are passed over
   until nothing else is left, then a second statement takes them), with FOR UPDATE SKIP LOCKED so
   concurrent reviewers pass over each other's candidates instead of waiting,
   leases it (item → in_review, version + 1), opens a Claim and audits it.
   Alone it needs no BEGIN/COMMIT: one statement is one transaction.

The audit JSON mirrors services.audit.item_state.
"""

from datetime import datetime

from django.db import connection

from annotations.models import Item

_ITEM_COLUMNS = ", ".join(f'leased."{field.column}"' for field in Item._meta.concrete_fields)

SWEEP_SQL = """
WITH expired AS (
    SELECT id, lease_owner_id FROM annotations_item
    WHERE domain_id = ANY(%(domain_ids)s) AND status = 'in_review' AND lease_expires_at <= %(now)s
    ORDER BY lease_expires_at
    LIMIT %(sweep_limit)s
    FOR UPDATE SKIP LOCKED
), released AS (
    UPDATE annotations_item AS item
    SET status = 'ready', lease_owner_id = NULL, lease_expires_at = NULL,
        version = item.version + 1, updated_at = %(now)s
    FROM expired WHERE item.id = expired.id
    RETURNING item.id, item.version, item.approvals, expired.lease_owner_id AS previous_owner
), released_claims AS (
    UPDATE annotations_claim SET ended_at = %(now)s, end_reason = 'expired'
    WHERE item_id IN (SELECT id FROM released) AND ended_at IS NULL
), released_audit AS (
    INSERT INTO annotations_auditevent (actor_id, verb, target_type, target_id, before, after, created_at)
    SELECT NULL, 'item.lease_expired', 'annotations.item', id::text,
           jsonb_build_object('status', 'in_review', 'version', version - 1, 'approvals', approvals,
                              'lease_owner', previous_owner),
           jsonb_build_object('status', 'ready', 'version', version, 'approvals', approvals, 'lease_owner', NULL),
           %(now)s
    FROM released
)
SELECT id, version FROM released
"""

LEASE_SQL = """
WITH next_item AS (
    SELECT candidate.id FROM annotations_item AS candidate
    WHERE candidate.domain_id {domain_match} AND candidate.status = 'ready'
      AND (candidate.approvals = 0 OR NOT EXISTS (
            SELECT 1 FROM annotations_review AS review
            WHERE review.item_id = candidate.id AND review.reviewer_id = %(reviewer_id)s
              AND review.decision = 'approve'))
      {skip_filter}
    ORDER BY candidate.priority DESC, candidate.created_at, candidate.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE annotations_item AS item
    SET status = 'in_review', lease_owner_id = %(reviewer_id)s, lease_expires_at = %(until)s,
        version = item.version + 1, updated_at = %(now)s
    FROM next_item WHERE item.id = next_item.id
    RETURNING item.*
), new_claim AS (
    INSERT INTO annotations_claim (item_id, reviewer_id, claimed_at, lease_expires_at, ended_at, end_reason)
    SELECT id, %(reviewer_id)s, %(now)s, %(until)s, NULL, '' FROM leased
), claim_audit AS (
    INSERT INTO annotations_auditevent (actor_id, verb, target_type, target_id, before, after, created_at)
    SELECT %(reviewer_id)s, 'item.claimed', 'annotations.item', id::text,
           jsonb_build_object('status', 'ready', 'version', version - 1, 'approvals', approvals, 'lease_owner', NULL),
           jsonb_build_object('status', 'in_review', 'version', version, 'approvals', approvals,
                              'lease_owner', %(reviewer_id)s),
           %(now)s
    FROM leased
)
SELECT {item_columns} FROM leased
"""
_NOT_SKIPPED = """AND NOT EXISTS (
            SELECT 1 FROM annotations_claim AS skipped
            WHERE skipped.item_id = candidate.id AND skipped.reviewer_id = %(reviewer_id)s
              AND skipped.end_reason = 'skipped')"""
# "= ANY(array)" stops PostgreSQL from reading the per-domain queue index in order; one domain uses "=".
_DOMAIN_MATCH = {True: "= %(domain_id)s", False: "= ANY(%(domain_ids)s)"}
_LEASE = {
    (one_domain, skipped_too): LEASE_SQL.format(
        item_columns=_ITEM_COLUMNS,
        domain_match=_DOMAIN_MATCH[one_domain],
        skip_filter="" if skipped_too else _NOT_SKIPPED,
    )
    for one_domain in (True, False)
    for skipped_too in (True, False)
}


def sweep_expired(*, domain_ids: list[int], now: datetime, sweep_limit: int) -> list[tuple[int, int]]:
    """Hand back expired leases; returns (id, new version) of each item handed back."""
    if not domain_ids:
        return []
    with connection.cursor() as cursor:
        cursor.execute(SWEEP_SQL, {"domain_ids": domain_ids, "now": now, "sweep_limit": sweep_limit})
        return [(item_id, version) for item_id, version in cursor.fetchall()]


def lease_next(
    *, reviewer_id: int, domain_ids: list[int], now: datetime, until: datetime, skipped_too: bool = False
) -> Item | None:
    """Lease the best claimable item to the reviewer (passing over items they skipped unless `skipped_too`);
    None when there is none."""
    params = {
        "domain_ids": domain_ids,
        "domain_id": domain_ids[0],
        "now": now,
        "until": until,
        "reviewer_id": reviewer_id,
    }
    sql = _LEASE[(len(domain_ids) == 1, skipped_too)]
    return next(iter(Item.objects.raw(sql, params)), None)
