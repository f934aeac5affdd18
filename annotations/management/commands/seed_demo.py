"""Demo users and items. Safe to run twice: users are updated, items are
submitted with an Idempotency-Key per case, so nothing is duplicated."""

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand
from django.db import transaction
from tqdm import tqdm

from annotations import roles, services
from annotations.demo_data import demo_cases
from annotations.models import Domain

# username, role groups, superuser, reviews every domain
DEMO_USERS = [
    ("reviewer", [roles.REVIEWER], False, True),
    ("reviewer2", [roles.REVIEWER], False, True),
    ("manager", [roles.MODEL_MANAGER], False, False),
    ("integration", [roles.INTEGRATION], False, False),
    ("admin", [], True, False),
]


def demo_password(username: str) -> str:
    return f"{username}-demo"


class Command(BaseCommand):
    help = "Create demo users (passwords printed) and synthetic items to review."

    @transaction.atomic
    def _seed_users(self) -> dict[str, User]:
        users = {}
        for username, group_names, superuser, reviews_all in DEMO_USERS:
            user, _ = User.objects.get_or_create(username=username)
            user.set_password(demo_password(username))
            user.is_superuser = superuser
            user.is_staff = superuser or roles.MODEL_MANAGER in group_names  # managers work in the admin
            user.email = f"{username}@example.org"
            user.save()
            user.groups.set([Group.objects.get_or_create(name=name)[0] for name in group_names])
            if reviews_all:
                for domain in Domain.objects.all():
                    domain.reviewers.add(user)
            users[username] = user
        return users

    def handle(self, *args, **options):
        users = self._seed_users()
        created = 0
        for case in tqdm(demo_cases(), desc="demo items", unit="item"):
            _, was_created = services.item_submit(
                submitted_by=users["integration"],
                domain=case.domain,
                input=case.input,
                external_id=case.external_id,
                metadata=case.metadata,
                draft=case.draft,
                priority=case.priority,
                idempotency_key=f"demo-{case.external_id}",
            )
            created += was_created
        self.stdout.write(self.style.SUCCESS(f"{created} new demo items."))
        self.stdout.write("Demo logins (username / password):")
        for username, group_names, superuser, _ in DEMO_USERS:
            role = "admin" if superuser else ", ".join(group_names)
            self.stdout.write(f"  {username:<12} {demo_password(username):<18} {role}")
