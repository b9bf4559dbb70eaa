from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"

    def ready(self) -> None:
        from monitoring import signals  # noqa: F401  (connects the Celery signal handlers)
        from monitoring.health import BREAKER_STATE_PROVIDERS
        from monitoring.logs import CRITICAL_ROW_HOOKS
        from monitoring.services import alert_for_critical_log

        BREAKER_STATE_PROVIDERS.append(_breaker_states)
        CRITICAL_ROW_HOOKS.append(alert_for_critical_log)


def _breaker_states() -> dict[str, str]:
    from django.conf import settings

    from generation.breaker import breaker_states

    return breaker_states([settings.COURSEGEN_MODEL_COMPLEX, settings.COURSEGEN_MODEL_SIMPLE])
