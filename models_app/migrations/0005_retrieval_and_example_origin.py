"""Training examples say what their approval taught (TrainingExample.origin); a model draft approved unchanged
weighs 0 as new data (models_app/datasets.py)."""

from django.db import migrations, models


def classify_existing(apps, schema_editor):
    """Examples recorded before origins: weight 2 was a correction; weight 1 an unchanged approval, which is
    "accepted" when the approved text is what the model wrote (its latest finished generation), else "written"."""
    TrainingExample = apps.get_model("models_app", "TrainingExample")
    Generation = apps.get_model("annotations", "Generation")
    for example in TrainingExample.objects.filter(weight__lt=2).select_related("item").iterator():
        item = example.item
        model_text = (
            Generation.objects.filter(item_id=item.pk, status="done", source="model")
            .order_by("-id")
            .values_list("text", flat=True)
            .first()
        )
        accepted = model_text is not None and model_text == item.draft and item.final_text == item.draft
        origin, weight = ("accepted", 0.0) if accepted else ("written", 1.0)
        TrainingExample.objects.filter(pk=example.pk).update(origin=origin, weight=weight)


class Migration(migrations.Migration):
    dependencies = [
        ("models_app", "0004_model_manager_sees_finetuning"),
        ("annotations", "0011_domain_retrieval_examples"),
    ]

    operations = [
        migrations.AddField(
            model_name="trainingexample",
            name="origin",
            field=models.CharField(
                choices=[
                    ("corrected", "a reviewer changed the draft"),
                    ("written", "approved as written by a person (a submitted draft)"),
                    ("accepted", "the model's own draft approved unchanged"),
                ],
                default="corrected",
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="trainingexample",
            name="weight",
            field=models.FloatField(
                default=1.0,
                help_text="Loss weight as new data: corrected 2, written 1, accepted 0 (replay only: it teaches nothing new).",
            ),
        ),
        migrations.RunPython(classify_existing, migrations.RunPython.noop),
    ]
