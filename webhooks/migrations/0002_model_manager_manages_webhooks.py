"""Model managers manage webhook endpoints in the admin and read the delivery log (PRODUCT.md §1, §5)."""

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
        *Permission.objects.filter(content_type__app_label="webhooks", codename__endswith="_endpoint"),
        *Permission.objects.filter(content_type__app_label="webhooks", codename__startswith="view_"),
    )


class Migration(migrations.Migration):
    dependencies = [("webhooks", "0001_initial"), ("models_app", "0004_model_manager_sees_finetuning")]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
