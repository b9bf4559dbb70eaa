"""The OpenAPI schema's shared parts (DEFAULT_SCHEMA_CLASS): every operation documents the errors
the whole API may answer with, besides the ones its view declares.

Client generators and the Schemathesis run in the tests (tests/test_schemathesis.py) read every
response against this schema, so a status or body left out here is a bug. The error bodies are
serializers in coursegen/drf.py; here, how they map to the schema.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer
from rest_framework.permissions import AllowAny

from coursegen.drf import (
    ClosedOutputSerializer,
    ErrorOutputSerializer,
    FieldErrorsOutputSerializer,
)
from ratelimits.serializers import RateLimitExceededOutputSerializer

UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def bad_request(*bodies: Any, description: str = "") -> OpenApiResponse:
    """400: field errors, a body that is not JSON ({detail}), or any of `bodies` (closed
    serializers, told apart from the others by their fields)."""
    names = "".join(getattr(b, "__name__", type(b).__name__) for b in bodies)
    return OpenApiResponse(
        PolymorphicProxySerializer(
            component_name=f"BadRequest{names.replace('OutputSerializer', '')}",
            serializers=[FieldErrorsOutputSerializer, ErrorOutputSerializer, *bodies],
            resource_type_field_name=None,
        ),
        description=description or "Field errors; or a body that is not valid JSON (detail)",
    )


def error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorOutputSerializer, description=description)


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's, plus the responses any operation may give whatever its view says:
    401 (no or a bad token), 403 (CSRF for session callers on writes), 404 (an unknown id in
    the path), 400/413/415 (a body that cannot be read), 429 (the request throttle)."""

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        for code, response in self._common_responses().items():
            if str(code) not in responses:
                responses[str(code)] = self._get_response_for_code(
                    response, str(code), direction=direction
                )
        return responses

    def _common_responses(self) -> dict[int, OpenApiResponse]:
        anonymous = any(isinstance(p, AllowAny) for p in self.view.get_permissions())
        common: dict[int, OpenApiResponse] = {
            401: error(
                "An unknown or expired token (call without one)"
                if anonymous
                else "No credentials, or an unknown or expired token "
                "(Authorization: Token <key>, or a session)"
            )
        }
        if self.method in UNSAFE_METHODS:
            common[403] = error("CSRF check failed (callers signed in with a session)")
        if "{" in self.path:
            common[404] = error("No such object, or not one the caller may see")
        if self.method in UNSAFE_METHODS and self.get_request_serializer() is not None:
            common[400] = bad_request()
            common[413] = error("The body is larger than API_MAX_BODY_BYTES")
            common[415] = error("The Content-Type is not one the operation reads")
        if self.view.get_throttles():
            common[429] = OpenApiResponse(
                RateLimitExceededOutputSerializer,
                description="Over the request throttle (window requests, COURSEGEN_API_RATE); "
                "Retry-After says when to retry",
            )
        return common


FIELD_ERRORS = (
    "Each invalid field (or non_field_errors, or a header such as Idempotency-Key) with its "
    "messages; a nested field's errors are an object of the same shape."
)


class FieldErrorsExtension(OpenApiSerializerExtension):
    target_class = FieldErrorsOutputSerializer

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        messages = {"type": "array", "items": {"type": "string"}}
        return {
            "type": "object",
            "description": FIELD_ERRORS,
            "minProperties": 1,
            "additionalProperties": {"oneOf": [messages, {"type": "object"}]},
        }


class ClosedOutputExtension(OpenApiSerializerExtension):
    target_class = ClosedOutputSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema = auto_schema._map_basic_serializer(self.target, direction)
        return {**schema, "additionalProperties": False}
