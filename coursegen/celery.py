"""The Celery application. All of its settings live in settings.py under the CELERY_ prefix."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coursegen.settings")

app = Celery("coursegen")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
