"""The project's URLs plus one test-only view that hands a browser an existing session cookie.

Headless Chromium has no flag for cookies; it follows this redirect, keeps the cookie and lands
on the page under test already logged in. It exists only in this test URLconf.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import path
from django.utils.http import url_has_allowed_host_and_scheme

from coursegen.urls import urlpatterns as project_urlpatterns


def set_session_cookie(request: HttpRequest) -> HttpResponseRedirect:
    target = request.GET.get("next", "/admin/")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts=None):
        target = "/admin/"
    response = HttpResponseRedirect(target)
    response.set_cookie(settings.SESSION_COOKIE_NAME, request.GET["key"], httponly=True)
    return response


urlpatterns = [path("__test__/session/", set_session_cookie), *project_urlpatterns]
