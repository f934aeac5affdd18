"""customer_service drafts: no 4-gram twice within a draft (the draft's own tokens; the prompt's examples may
repeat). Chosen by bench/learning.py --sweep-sampling on the two tuning house styles (docs/benchmarks.md):
mean held-out edit distance with retrieval 0.676 with no repetition control, 0.652 with a repetition penalty
of 1.1, 0.746 with 1.2, 0.635 with no_repeat_ngram_size 4; the base model's long, looping drafts (106
words on average on one style) came down to 64 words. A domain whose sampling already names the setting
keeps its own."""

from django.db import migrations


def set_default(apps, schema_editor):
    Domain = apps.get_model("annotations", "Domain")
    for domain in Domain.objects.filter(slug="customer_service"):
        if "no_repeat_ngram_size" not in domain.sampling:
            domain.sampling = {**domain.sampling, "no_repeat_ngram_size": 4}
            domain.save(update_fields=["sampling"])


def unset_default(apps, schema_editor):
    Domain = apps.get_model("annotations", "Domain")
    for domain in Domain.objects.filter(slug="customer_service"):
        if domain.sampling.get("no_repeat_ngram_size") == 4:
            domain.sampling = {k: v for k, v in domain.sampling.items() if k != "no_repeat_ngram_size"}
            domain.save(update_fields=["sampling"])


class Migration(migrations.Migration):
    dependencies = [("annotations", "0011_domain_retrieval_examples")]

    operations = [migrations.RunPython(set_default, unset_default)]
