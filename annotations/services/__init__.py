"""Writes. Each service checks state before acting and audits what it changed."""

from .claims import item_claim_next, item_heartbeat, item_release, leases_expire
from .generation import generation_cancel, generation_request, generation_run
from .items import item_submit
from .reviews import review_submit

__all__ = [
    "generation_cancel",
    "generation_request",
    "generation_run",
    "item_claim_next",
    "item_heartbeat",
    "item_release",
    "item_submit",
    "leases_expire",
    "review_submit",
]
