"""DRF plumbing every API view shares (named in REST_FRAMEWORK): the JSON parser, the exception
handler and the pagination class.

Hostile bodies must end in a clear 4xx, never a 5xx: a deeply nested document made the stock
parser raise RecursionError (500), and a body of any size was read whole into memory.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import exceptions, pagination
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.utils import json


class RequestTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "The request body is too large."
    default_code = "request_too_large"


class BoundedJSONParser(JSONParser):
    """DRF's JSONParser that reads at most API_MAX_BODY_BYTES and accepts at most
    API_JSON_MAX_DEPTH levels of nesting; either limit answers 4xx (413, 400)."""

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        limit = settings.API_MAX_BODY_BYTES
        request = (parser_context or {}).get("request")
        if request is not None and _declared_length(request) > limit:
            raise _too_large(limit)  # refused before a byte of it is read
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:  # no (or a false) Content-Length: read one byte past the limit
            raise _too_large(limit)
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.decode(raw, encoding)
            data = json.loads(text, parse_constant=json.strict_constant if self.strict else None)
        except RecursionError as exc:
            raise exceptions.ParseError("JSON parse error - nested too deeply") from exc
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from exc
        if _depth_exceeds(data, settings.API_JSON_MAX_DEPTH):
            raise exceptions.ParseError(
                f"JSON parse error - nested more than {settings.API_JSON_MAX_DEPTH} levels deep"
            )
        return data


def _declared_length(request: Any) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than {limit} bytes.")


def _depth_exceeds(data: Any, max_depth: int) -> bool:
    """Whether a parsed document nests containers deeper than max_depth (iteratively: the
    document may be just under the interpreter's recursion limit)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus Django's own "body too large" (form and multipart bodies over
    DATA_UPLOAD_MAX_MEMORY_SIZE) as a JSON 413 instead of an HTML 400."""
    if isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge(str(exc) or RequestTooLarge.default_detail)
    # Imported here: rest_framework.views reads REST_FRAMEWORK, which names this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    return drf_exception_handler(exc, context)


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """PAGE_SIZE by default, at most API_PAGE_MAX_LIMIT per page whatever `limit` asks."""

    @property
    def max_limit(self) -> int:  # type: ignore[override]  # read per request: settings may change
        return int(settings.API_PAGE_MAX_LIMIT)
