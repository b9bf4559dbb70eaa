"""DRF plumbing every API view shares (named in REST_FRAMEWORK): the JSON parser, the exception
handler, the pagination class, the JSON 404 for unknown /api/ paths, and the error bodies the
OpenAPI schema documents (coursegen/openapi.py).

Hostile bodies must end in a clear 4xx, never a 5xx: a deeply nested document made the stock
parser raise RecursionError (500), and a body of any size was read whole into memory.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, pagination, serializers
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
            # bytes.decode takes text encodings only: codecs.decode would also run rot13, zlib or
            # bz2 named as the charset, and they fail with errors other than ValueError.
            text = raw.decode(encoding)
        except LookupError as exc:
            raise exceptions.ParseError(f"Unsupported charset: {encoding}") from exc
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from exc
        try:
            data = json.loads(text, parse_constant=json.strict_constant if self.strict else None)
        except RecursionError as exc:
            raise exceptions.ParseError("JSON parse error - nested too deeply") from exc
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from exc
        problem = _document_problem(data, settings.API_JSON_MAX_DEPTH)
        if problem:
            raise exceptions.ParseError(f"JSON parse error - {problem}")
        return data


def _declared_length(request: Any) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than {limit} bytes.")


def _document_problem(data: Any, max_depth: int) -> str | None:
    """What makes a parsed document unfit, or None: containers nested deeper than max_depth
    (walked iteratively: the document may be just under the interpreter's recursion limit), or
    a string or key holding a lone surrogate ("\\ud800" is valid JSON but not Unicode text:
    an error message that echoed it back could not be encoded, a 500)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if not _encodable(value):
                return "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), not text"
            continue
        if isinstance(value, dict):
            if not all(_encodable(key) for key in value):
                return "a key holds a lone UTF-16 surrogate (\\ud800-\\udfff), not text"
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            return f"nested more than {max_depth} levels deep"
        stack.extend((child, depth + 1) for child in children)
    return None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class ThrottledWithBody(exceptions.Throttled):
    """A 429 answered with a whole body (the rate-limit body that job admission answers with
    too), not DRF's bare {"detail"}: one 429 shape for clients, whichever limit refused them."""

    def __init__(self, *, body: dict[str, Any], wait: float) -> None:
        super().__init__(wait=wait, detail=str(body["detail"]))
        self.body = body


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus Django's own refusals of form and multipart bodies as JSON instead
    of an HTML 400: too large (over DATA_UPLOAD_MAX_MEMORY_SIZE, 413), too many fields or
    files (400); and throttles' bodies."""
    if isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge(str(exc) or RequestTooLarge.default_detail)
    elif isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        exc = exceptions.ParseError(str(exc))
    # Imported here: rest_framework.views reads REST_FRAMEWORK, which names this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, ThrottledWithBody):
        response.data = exc.body  # DRF's handler would turn its numbers into strings
    return response


def client_ip(request: HttpRequest) -> str:
    """The client address throttles count by (RATELIMIT_IP_META_KEY): REMOTE_ADDR, or one shared
    "0.0.0.0" when it is missing or not an address (a Unix socket, a test client); django-
    ratelimit's own lookup raised KeyError or ValueError there, a 500."""
    address = request.META.get("REMOTE_ADDR") or ""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return "0.0.0.0"


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: under /api/ a JSON body like every other API error (a path no route
    matches, e.g. a job id that is not a UUID); elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """PAGE_SIZE by default, at most API_PAGE_MAX_LIMIT per page whatever `limit` asks."""

    @property
    def max_limit(self) -> int:  # type: ignore[override]  # read per request: settings may change
        return int(settings.API_PAGE_MAX_LIMIT)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        # DRF's, with what the values may be and what happens to others.
        limit, offset = super().get_schema_operation_parameters(view)
        limit["description"] = (
            f"Results per page (default {settings.REST_FRAMEWORK['PAGE_SIZE']}); a larger value "
            f"than {self.max_limit} is capped to it, an invalid one gives the default."
        )
        limit["schema"] = {"type": "integer", "minimum": 1}
        offset["description"] = "How many results to skip (default 0)."
        offset["schema"] = {"type": "integer", "minimum": 0}
        return [limit, offset]


class StrictCharField(serializers.CharField):
    """A CharField that takes only strings: DRF's turns a number into its text, so
    {"instruction": 0} was accepted as the instruction "0"."""

    default_error_messages = {"invalid": "Not a valid string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """An IntegerField that takes a JSON integer, or a string of ASCII digits (a form field).
    DRF's passes any text through int(): "1_0" was 10, Arabic-Indic or full-width digits were
    read as numbers, and 1.0 or "1.0" were 1."""

    default_error_messages = {"invalid": "A whole number is required (digits only)."}
    _DIGITS = re.compile(r"-?[0-9]{1,18}")

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not (
            isinstance(data, int) or (isinstance(data, str) and self._DIGITS.fullmatch(data))
        ):
            self.fail("invalid")
        return super().to_internal_value(data)


# --- Error bodies (documented in the OpenAPI schema, coursegen/openapi.py) ---------------------
class ClosedOutputSerializer(serializers.Serializer):
    """An output body with exactly its declared fields (additionalProperties: false in the
    schema): error bodies are told apart by their fields where one status has several."""


class ErrorOutputSerializer(ClosedOutputSerializer):
    """DRF's error body: 401, 403, 404, 405, 413, 415, and a body that is not valid JSON (400)."""

    detail = serializers.CharField()
    code = serializers.CharField(required=False, help_text="A stable name for the error.")


class FieldErrorsOutputSerializer(serializers.Serializer):
    """400: each invalid field (or non_field_errors, or a header such as Idempotency-Key) maps
    to its messages; a nested field's errors are an object of the same shape."""
