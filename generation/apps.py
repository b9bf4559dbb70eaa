from django.apps import AppConfig


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Course generation"

    def ready(self) -> None:
        from generation import warmup  # noqa: F401  (connects the worker_init warm-up)
