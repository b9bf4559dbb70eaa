import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coursegen.settings")
application = get_wsgi_application()

from coursegen.runtime import web_process_ready  # noqa: E402  (needs the configured settings)

web_process_ready()
