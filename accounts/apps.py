from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Organisations and roles"

    def ready(self) -> None:
        from django.contrib import admin
        from django.db.models.signals import post_migrate

        from accounts import tenancy
        from coursegen import checks  # noqa: F401  # registers the project's system checks

        # After every app's admin module registered (django.contrib.admin comes first).
        tenancy.scope_admin_site(admin.site)
        post_migrate.connect(_group_sync, sender=self)


def _group_sync(**kwargs: object) -> None:
    from django.apps import apps
    from django.contrib.auth.management import create_permissions

    from accounts.services import organisation_admins_group_sync

    # post_migrate reaches this app before the apps after it in INSTALLED_APPS: make their
    # permissions now, or the group would miss them on a fresh database.
    for app_config in apps.get_app_configs():
        create_permissions(app_config, verbosity=0)
    organisation_admins_group_sync()
