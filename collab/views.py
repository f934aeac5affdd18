"""The live view of one item: its draft streaming in over /ws/items/{id}/ (the review screen is the dashboard's)."""

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from annotations.exceptions import NotFound
from annotations.selectors import item_get_for_user


@login_required
def item_live(request, item_id: int):
    try:
        item = item_get_for_user(user=request.user, item_id=item_id)
    except NotFound:
        raise Http404("Item not found.") from None
    return render(request, "collab/item_live.html", {"item": item})
