import factory
from django.contrib.auth.models import Group, User

from annotations import roles
from annotations.models import Domain, Generation, Item


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pass-for-tests-123")

    @factory.post_generation
    def roles(self, create, extracted, **kwargs):
        for name in extracted or []:
            self.groups.add(Group.objects.get_or_create(name=name)[0])

    @factory.post_generation
    def domains(self, create, extracted, **kwargs):
        for domain in extracted or []:
            domain.reviewers.add(self)


def reviewer_factory(*domains: Domain, **kwargs) -> User:
    return UserFactory(roles=[roles.REVIEWER], domains=list(domains), **kwargs)


class DomainFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Domain
        django_get_or_create = ["slug"]

    slug = factory.Sequence(lambda n: f"domain_{n}")
    name = factory.LazyAttribute(lambda o: o.slug.replace("_", " ").title())
    prompt_template = "Answer: {input}"
    rubric = [{"name": "accuracy", "description": "Correct."}, {"name": "tone", "description": "Kind."}]
    approvals_required = 1


class ItemFactory(factory.django.DjangoModelFactory):
    """A ready, review-only item (it came with a draft)."""

    class Meta:
        model = Item
        skip_postgeneration_save = True

    domain = factory.SubFactory(DomainFactory)
    status = Item.Status.READY
    input = factory.Sequence(lambda n: f"Customer message number {n}: where is my parcel?")
    draft = "Hello, your parcel is on its way."
    priority = 0

    @factory.post_generation
    def with_generation(self, create, extracted, **kwargs):
        if self.draft and extracted is not False:
            Generation.objects.create(item=self, source=Generation.Source.SUBMITTED, text=self.draft)
