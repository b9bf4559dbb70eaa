import os

from django.core.wsgi import get_wsgi_application

from coursegen.charset import charset_guard

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coursegen.settings")
application = charset_guard(get_wsgi_application())

from coursegen.checks import refuse_insecure_secret_key  # noqa: E402  (needs the settings)
from coursegen.runtime import web_process_ready  # noqa: E402  (needs the configured settings)
from generation.warmup import providers_build  # noqa: E402  (needs the configured settings)

refuse_insecure_secret_key()
providers_build()  # before the heap is frozen, and not inside the first submit
web_process_ready()
