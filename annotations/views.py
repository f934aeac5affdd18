"""Pages for reviewers. Thin: selectors read, templates show (as text: Django escapes everything)."""

from django.shortcuts import render
from django.utils import timezone

from . import selectors


def home(request):
    context = {}
    if request.user.is_authenticated:
        midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
        context["domains"] = selectors.domain_queue_counts(user=request.user, since=midnight)
        context["recent_reviews"] = selectors.reviews_recent_by(user=request.user)
    return render(request, "home.html", context)
