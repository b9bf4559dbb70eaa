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
    from accounts.services import organisation_admins_group_sync

    organisation_admins_group_sync()
