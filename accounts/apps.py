from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Organisations and roles"

    def ready(self) -> None:
        from coursegen import checks  # noqa: F401  # registers the project's system checks
