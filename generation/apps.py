from django.apps import AppConfig


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Course generation"

    def ready(self) -> None:
        # The services send these Celery tasks by name (generation/messages.py): registered in
        # every process, web and worker alike.
        from generation import (
            moderation_models,  # noqa: F401  (registers the HeldContent proxy)
            pricing,  # noqa: F401  (registers the model-price system check)
            tasks,  # noqa: F401
            warmup,  # noqa: F401  (connects the worker_init warm-up)
        )
        from generation.quality import checks  # noqa: F401  (registers the system checks)
