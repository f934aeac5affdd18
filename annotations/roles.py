"""Roles are Django groups (PRODUCT.md §5); superusers are admins and may do everything.

A reviewer reviews only the domains listed in Domain.reviewers.
"""

from django.contrib.auth.models import AbstractBaseUser

REVIEWER = "reviewer"
MODEL_MANAGER = "model_manager"
INTEGRATION = "integration"
ALL_ROLES = (REVIEWER, MODEL_MANAGER, INTEGRATION)


def user_roles(user: AbstractBaseUser) -> set[str]:
    if not user.is_authenticated or not user.is_active:
        return set()
    if user.is_superuser:
        return set(ALL_ROLES)
    cached = getattr(user, "_sora_roles", None)
    if cached is None:
        cached = set(user.groups.filter(name__in=ALL_ROLES).values_list("name", flat=True))
        user._sora_roles = cached
    return cached


def forget_cached_roles(user: AbstractBaseUser) -> None:
    """For a user object that outlives a request (a WebSocket's): read the roles again next time."""
    user._sora_roles = None


def has_role(user: AbstractBaseUser, *roles: str) -> bool:
    return bool(user_roles(user) & set(roles))


def is_admin(user: AbstractBaseUser) -> bool:
    return bool(user.is_authenticated and user.is_active and user.is_superuser)


def is_manager(user: AbstractBaseUser) -> bool:
    return has_role(user, MODEL_MANAGER)


def sees_all_items(user: AbstractBaseUser) -> bool:
    return is_manager(user)
