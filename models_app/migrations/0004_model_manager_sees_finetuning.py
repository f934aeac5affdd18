"""Model managers see fine-tune jobs and dataset snapshots in the admin (PRODUCT.md §1)."""

from django.db import migrations


def grant(apps, schema_editor):
    # Permissions are normally created after all migrations; create them now for this app.
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="model_manager")
    group.permissions.add(
        *Permission.objects.filter(content_type__app_label="models_app", codename__startswith="view_")
    )


class Migration(migrations.Migration):
    dependencies = [("models_app", "0003_datasets_and_finetune_jobs"), ("annotations", "0009_review_generation")]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
