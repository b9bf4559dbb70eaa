import os
import sys

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coursegen.settings")
application = get_wsgi_application()

from django.conf import settings  # noqa: E402  (after the settings module is configured)

# A web thread back from a PostgreSQL round trip waits for the GIL behind CPU-bound threads (status
# polls) up to the switch interval, once per statement; a shorter interval shortens that wait.
sys.setswitchinterval(settings.WEB_GIL_SWITCH_INTERVAL_S)
