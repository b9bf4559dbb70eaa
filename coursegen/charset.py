"""Requests Django would answer with a 500 get a JSON 400 before Django.

A Content-Type naming a codec that is not a text encoding: Django takes any codec Python knows
as a request's encoding (`charset=rot13`, `zlib`, `bz2`), then fails with LookupError decoding
its query string or form: a 500 on any URL, raised while the request object is built, before any
middleware runs. A charset Python does not know is left alone: Django ignores it and keeps the
default.

A NUL character in the URL (`?status__exact=%00`): PostgreSQL's text refuses it, so a filter
that reaches a query (the admin's list filters, on every model) raised DataError, a 500."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from django.utils.http import parse_header_parameters


def non_text_charset(content_type: str) -> str | None:
    """The charset `content_type` names when it is a codec but not a text encoding, else None."""
    charset = parse_header_parameters(content_type)[1].get("charset")
    if not charset:
        return None
    try:
        codecs.lookup(charset)
    except LookupError:
        return None  # unknown: Django ignores it
    try:
        # bytes.decode takes text encodings only (it checks once there is something to decode).
        b"\0\0\0\0".decode(charset)
    except LookupError:
        return charset
    except UnicodeDecodeError:
        pass  # a text encoding these bytes are not valid in
    return None


def url_has_nul(environ: WSGIEnvironment) -> bool:
    query = environ.get("QUERY_STRING", "")
    return "\x00" in environ.get("PATH_INFO", "") or "%00" in query or "\x00" in query


def charset_guard(app: WSGIApplication) -> WSGIApplication:
    def guarded(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        charset = non_text_charset(environ.get("CONTENT_TYPE", ""))
        if charset is not None:
            detail = f"Unsupported charset: {charset}"
        elif url_has_nul(environ):
            detail = "The URL holds a NUL character (%00)."
        else:
            return app(environ, start_response)
        body = json.dumps({"detail": detail}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response("400 Bad Request", headers)
        return [body]

    return guarded
