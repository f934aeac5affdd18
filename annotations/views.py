"""Pages for reviewers. Thin: selectors read, templates show (as text: Django escapes everything).

The review screen is one template for two entrances: `/review/<domain>/` works
through the domain's queue, `/items/<id>/` opens one item (read-only unless
you hold its lease). The page's script takes it from there through the API
and the item's live channel; it receives its starting data as JSON
(`json_script`, which is data, not script).
"""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render
from django.utils import timezone

from . import roles, selectors
from .apis import ItemOutputSerializer
from .exceptions import NotFound
from .models import Domain


def home(request):
    context = {}
    if request.user.is_authenticated:
        midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
        context["domains"] = selectors.domain_queue_counts(user=request.user, since=midnight)
        context["recent_reviews"] = selectors.reviews_recent_by(user=request.user)
    return render(request, "home.html", context)


@login_required
def review_queue(request, domain: str):
    try:
        chosen = selectors.domain_get_for_reviewer(user=request.user, slug=domain)
    except NotFound:
        raise Http404("You do not review a domain of that name.") from None
    held = selectors.items_leased_to(user=request.user, domain=chosen, now=timezone.now())[:2]
    return _review_screen(request, chosen, mode="queue", items=list(held))


@login_required
def item_review(request, item_id: int):
    try:
        item = selectors.item_get_for_user(user=request.user, item_id=item_id)
    except NotFound:
        raise Http404("Item not found.") from None
    return _review_screen(request, item.domain, mode="item", items=[item])


def _review_screen(request, domain: Domain, *, mode: str, items: list):
    may_review = selectors.domains_reviewable_by(user=request.user).filter(pk=domain.pk).exists()
    boot = {
        "mode": mode,
        "user": request.user.get_username(),
        "domain": {"slug": domain.slug, "name": domain.name, "approvals_required": domain.approvals_required},
        "may_review": may_review,
        "may_generate": may_review or roles.is_manager(request.user),
        "lease_seconds": settings.SORA_LEASE_SECONDS,
        "items": ItemOutputSerializer(items, many=True).data,
    }
    rubric = [entry for entry in domain.rubric if isinstance(entry, dict) and entry.get("name")]
    return render(request, "annotations/review.html", {"domain": domain, "rubric": rubric, "boot": boot})
