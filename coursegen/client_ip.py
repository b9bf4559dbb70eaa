"""The client's address behind a proxy: RATELIMIT_IP_META_KEY when DJANGO_CLIENT_IP_HEADER is
set."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str:
    """The proxy's header when it holds one address; REMOTE_ADDR otherwise (a request that did
    not come through the proxy, e.g. a container healthcheck), never an error."""
    value = request.headers.get(settings.DJANGO_CLIENT_IP_HEADER, "").strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return str(request.META.get("REMOTE_ADDR") or "0.0.0.0")
