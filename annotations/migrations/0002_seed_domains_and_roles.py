"""The three domains of PRODUCT.md §3 and the role groups of §5."""

from django.db import migrations

DOMAINS = [
    {
        "slug": "customer_service",
        "name": "Customer service replies",
        "description": "A customer's message (+ order/account metadata) → a reply in the company's voice.",
        "prompt_template": (
            "You are a support agent for Brightwater Home Goods. Write a reply to the customer.\n"
            'Start with "Hi <first name>,", acknowledge the issue in one sentence, give concrete next '
            'steps, never promise what you cannot know, and sign off with "Best regards," and '
            '"The Brightwater Support Team".\n\nOrder and account: {metadata}\n\nCustomer message:\n{input}'
        ),
        "guidelines": (
            "Check that the reply answers the customer's actual question, names the order when relevant, "
            "promises nothing we cannot guarantee (refund dates, stock), keeps a warm, plain tone and ends "
            "with the team sign-off. Reject drafts that are unsafe to send or answer another question."
        ),
        "rubric": [
            {"name": "accuracy", "description": "Facts and next steps are correct for this order."},
            {"name": "tone", "description": "Warm, plain, on-brand; no blame, no jargon."},
            {"name": "completeness", "description": "Every question in the message is answered."},
        ],
        "approvals_required": 1,
        "redact_identifiers": False,
        "finetune_threshold": 50,
    },
    {
        "slug": "medical_note",
        "name": "Medical notes (SOAP)",
        "description": "A clinician–patient encounter transcript → a SOAP note.",
        "prompt_template": (
            "Write a SOAP note for this encounter. Use the headings S:, O:, A:, P: each on its own line, "
            "terse clinical sentences, vitals under O:, numbered plan items under P:, and refer to the "
            'patient only as "the patient".\n\nEncounter details: {metadata}\n\nTranscript:\n{input}'
        ),
        "guidelines": (
            "Every statement must be supported by the transcript; nothing invented. Check medications and "
            "doses, vitals and the plan against what was said. The note must not contain names, dates of "
            "birth or contact details. Two different reviewers must approve each note."
        ),
        "rubric": [
            {"name": "faithfulness", "description": "Everything is supported by the transcript."},
            {"name": "structure", "description": "Correct SOAP sections, terse and complete."},
            {"name": "safety", "description": "No dangerous omission or error in the plan."},
        ],
        "approvals_required": 2,
        "redact_identifiers": True,
        "finetune_threshold": 50,
    },
    {
        "slug": "news_draft",
        "name": "News drafts",
        "description": "A set of facts or a press release → a short news article.",
        "prompt_template": (
            "Write a short news article from these facts. First line: a headline in sentence case with no "
            "trailing period. Then a blank line and a body that starts with the dateline in capitals "
            'followed by " — ". Inverted pyramid, past tense, at most one quote attributed with "said", '
            "no hype words.\n\nDesk and limits: {metadata}\n\nFacts:\n{input}"
        ),
        "guidelines": (
            "Check every fact against the source; no claim the facts do not make. Headline in sentence case, "
            "dateline, most important fact first, neutral words, within the word limit."
        ),
        "rubric": [
            {"name": "accuracy", "description": "Every claim is in the source facts."},
            {"name": "clarity", "description": "Lead carries the news; plain sentences."},
            {"name": "style", "description": "House style: headline, dateline, attribution, length."},
        ],
        "approvals_required": 1,
        "redact_identifiers": False,
        "finetune_threshold": 50,
    },
]

ROLE_GROUPS = ["reviewer", "model_manager", "integration"]


def seed(apps, schema_editor):
    Domain = apps.get_model("annotations", "Domain")
    Group = apps.get_model("auth", "Group")
    for fields in DOMAINS:
        Domain.objects.update_or_create(slug=fields["slug"], defaults=fields)
    for name in ROLE_GROUPS:
        Group.objects.get_or_create(name=name)


def unseed(apps, schema_editor):
    apps.get_model("annotations", "Domain").objects.filter(slug__in=[d["slug"] for d in DOMAINS]).delete()


class Migration(migrations.Migration):
    dependencies = [("annotations", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]

    operations = [migrations.RunPython(seed, unseed)]
