from django.apps import AppConfig


class RatelimitsConfig(AppConfig):
    verbose_name = "Rate limits"
    name = "ratelimits"
