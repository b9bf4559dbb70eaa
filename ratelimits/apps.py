from django.apps import AppConfig


class RatelimitsConfig(AppConfig):
    verbose_name = "Rate limits"
    name = "ratelimits"

    def ready(self) -> None:
        from ratelimits import checks  # noqa: F401  # registers the system checks
