"""Model managers work in the admin (PRODUCT.md §1): their group may view the review
records and model versions, and edit domains."""

from django.db import migrations


def grant(apps, schema_editor):
    # Permissions are normally created after all migrations; create them now for these apps.
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="model_manager")
    view = Permission.objects.filter(
        content_type__app_label__in=["annotations", "models_app"], codename__startswith="view_"
    )
    change_domain = Permission.objects.filter(content_type__app_label="annotations", codename="change_domain")
    group.permissions.add(*view, *change_domain)


class Migration(migrations.Migration):
    dependencies = [("annotations", "0004_protect_lease_owners"), ("models_app", "0001_initial")]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
