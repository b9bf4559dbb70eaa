import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coursegen.settings")
application = get_asgi_application()

from coursegen.checks import refuse_insecure_secret_key  # noqa: E402  (needs the settings)

refuse_insecure_secret_key()
