"""Hostile and careless callers get a clear 4xx, never a 5xx: anonymous schema pages, deeply nested
JSON, oversized bodies, huge page sizes (issue 21, items 4 and 9)."""

from __future__ import annotations

import io
import json
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from django.core.wsgi import get_wsgi_application
from django.db import connection
from django.http import HttpRequest
from django.test.utils import CaptureQueriesContext
from rest_framework.exceptions import ParseError
from rest_framework.test import APIClient

from coursegen.charset import charset_guard, non_text_charset
from coursegen.drf import BoundedJSONParser, RequestTooLarge, client_ip
from generation.models import CourseEvaluation, CourseGenerationJob, RegenerationRequest
from tests.courses import finished_job

pytestmark = pytest.mark.django_db(transaction=True)

application = charset_guard(get_wsgi_application())  # what coursegen/wsgi.py serves


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture
def job(teacher: Any, base_class: Any, settings: Any) -> CourseGenerationJob:
    settings.COURSEGEN_JUDGE_ENABLED = False
    return finished_job(teacher, base_class, num_modules=1, lessons_per_module=1)


def _body_endpoints(job: CourseGenerationJob) -> list[str]:
    task = job.tasks.order_by("pk").first()
    assert task is not None
    return [
        "/api/jobs/",
        f"/api/jobs/{job.pk}/tasks/{task.pk}/regenerate/",
        f"/api/jobs/{job.pk}/feedback/",
    ]


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
def test_it_serves_the_schema_pages_to_anonymous_callers(path: str) -> None:
    response = APIClient().get(path)

    assert response.status_code == 200


def test_anonymous_callers_of_protected_views_get_401_not_500() -> None:
    response = APIClient().get("/api/jobs/")

    assert response.status_code == 401
    assert response.json()["detail"]


@pytest.mark.parametrize("depth", [100_000, 950, 33])
def test_it_answers_400_to_deeply_nested_json_on_every_endpoint_that_reads_a_body(
    depth: int, job: CourseGenerationJob, teacher: Any, client_for: Any
) -> None:
    client = client_for(teacher)
    for path in _body_endpoints(job):
        response = client.post(path, _nested(depth), content_type="application/json")

        assert response.status_code == 400, (path, response.content[:200])
        assert "nested" in response.json()["detail"]


def test_endpoints_that_read_no_body_ignore_a_nested_one(
    job: CourseGenerationJob, teacher: Any, client_for: Any
) -> None:
    client = client_for(teacher)
    for action in ("cancel", "resume"):
        response = client.post(
            f"/api/jobs/{job.pk}/{action}/", _nested(100_000), content_type="application/json"
        )

        assert response.status_code == 409, response.content[:200]  # the job has ended


def test_it_accepts_json_nested_up_to_the_limit() -> None:
    parser = BoundedJSONParser()

    data = parser.parse(io.BytesIO(_nested(32).encode()), parser_context={})

    assert isinstance(data, list)


@pytest.mark.parametrize(
    ("size", "detail"),
    [
        (50 * 1024 * 1024, "Request body exceeded"),  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE
        (300 * 1024, "The request body is larger than 262144 bytes"),  # API_MAX_BODY_BYTES
    ],
)
def test_it_answers_413_json_to_a_body_over_the_limit(
    size: int, detail: str, teacher: Any, client_for: Any
) -> None:
    body = b'{"topic": "' + b"x" * size + b'"}'

    response = client_for(teacher).post("/api/jobs/", body, content_type="application/json")

    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json()["detail"].startswith(detail)


def test_it_answers_413_json_to_a_form_body_over_djangos_limit(
    teacher: Any, client_for: Any, settings: Any
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = "topic=" + "x" * 20_000

    response = client_for(teacher).post(
        "/api/jobs/", body, content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"


def test_the_parser_stops_reading_a_body_without_a_length_one_byte_past_the_limit(
    settings: Any,
) -> None:
    settings.API_MAX_BODY_BYTES = 1024
    stream = io.BytesIO(b"[" + b"1," * 10_000 + b"1]")

    with pytest.raises(RequestTooLarge):
        BoundedJSONParser().parse(stream, parser_context={})

    assert stream.tell() == 1025


def test_the_parser_answers_400_to_bytes_that_are_not_utf8() -> None:
    with pytest.raises(ParseError):
        BoundedJSONParser().parse(io.BytesIO(b'{"topic": "\xff\xfe"}'), parser_context={})


@pytest.mark.parametrize("charset", ["rot13", "zlib", "bz2", "hex", "no-such-charset"])
def test_the_parser_answers_400_to_a_charset_that_is_not_a_text_encoding(charset: str) -> None:
    with pytest.raises(ParseError, match="Unsupported charset"):
        BoundedJSONParser().parse(io.BytesIO(b'{"a": 1}'), parser_context={"encoding": charset})


@pytest.mark.parametrize("charset", ["rot13", "zlib", "bz2"])
def test_every_body_endpoint_answers_400_to_a_charset_that_is_not_text(
    charset: str, job: CourseGenerationJob, teacher: Any, client_for: Any
) -> None:
    # Django takes any codec Python knows as the request's encoding; decoding JSON with zlib
    # raised zlib.error, a 500 (found in review).
    counted = (CourseGenerationJob, CourseEvaluation, RegenerationRequest)
    before = [model.objects.count() for model in counted]
    client = client_for(teacher)
    for url in _body_endpoints(job):
        response = client.post(
            url, b'{"topic": "Volcanoes"}', content_type=f"application/json; charset={charset}"
        )

        assert response.status_code == 400, (url, response.content[:300])
        assert "Unsupported charset" in response.json()["detail"]
    assert [model.objects.count() for model in counted] == before


def _call(
    app: Any,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    query: str = "",
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[str, bytes]:
    """One request through a WSGI application: its status line and body."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    setup_testing_defaults(environ)
    answered: list[str] = []
    chunks = app(environ, lambda status, headers, exc_info=None: answered.append(status))
    return answered[0], b"".join(chunks)


def _wsgi_post(app: Any, *, query: str, content_type: str) -> tuple[str, bytes]:
    return _call(
        app, "POST", "/api/jobs/", b"topic=Volcanoes", query=query, content_type=content_type
    )


@pytest.mark.parametrize("query", ["", "limit=5"])
@pytest.mark.parametrize("form", ["application/x-www-form-urlencoded", "multipart/form-data"])
def test_the_web_answers_400_to_a_non_text_charset_on_any_request(query: str, form: str) -> None:
    # Django built the request, decoding the query string or the form with zlib, before any
    # middleware: a 500 for any URL (found in review).
    content_type = f"{form}; boundary=x; charset=zlib"
    with pytest.raises(LookupError):
        _wsgi_post(get_wsgi_application(), query="limit=5", content_type=content_type)

    status, body = _wsgi_post(application, query=query, content_type=content_type)
    allowed, _ = _wsgi_post(application, query=query, content_type=f"{form}; charset=utf-8")

    assert status.startswith("400") and json.loads(body) == {"detail": "Unsupported charset: zlib"}
    assert allowed.startswith("401")  # through to Django: the API asks who is calling
    assert non_text_charset("application/json; charset=no-such-charset") is None  # Django ignores
    assert non_text_charset("text/plain; charset=latin-1") is None


def test_a_huge_limit_is_capped_and_the_list_leaves_the_documents_out(
    teacher: Any, base_class: Any, client_for: Any, settings: Any
) -> None:
    settings.COURSEGEN_JUDGE_ENABLED = False
    settings.API_PAGE_MAX_LIMIT = 2
    for _ in range(3):
        finished_job(teacher, base_class, num_modules=1, lessons_per_module=1)

    with CaptureQueriesContext(connection) as queries:
        response = client_for(teacher).get("/api/jobs/?limit=1000000")

    body = response.json()
    assert response.status_code == 200
    assert body["count"] == 3 and len(body["results"]) == 2 and body["next"]
    sql = [q["sql"] for q in queries]
    listing = next(q for q in sql if "course_generation_jobs" in q and "LIMIT" in q)
    assert '."course"' not in listing and '."outline"' not in listing


@pytest.mark.parametrize(
    ("key", "status"),
    [("k" * 256, 400), ("k" * 10_000, 400), ("", 400), ("k\x00", 400), ("k\x1b[0m", 400)],
)
def test_it_answers_400_to_an_idempotency_key_out_of_bounds(
    key: str, status: int, teacher: Any, base_class: Any, client_for: Any
) -> None:
    body = {"base_class": str(base_class.pk), "topic": "Volcanoes", "num_modules": 1}

    response = client_for(teacher).post(
        "/api/jobs/", body, format="json", headers={"Idempotency-Key": key}
    )

    assert response.status_code == status
    assert "Idempotency-Key" in response.json()
    assert not CourseGenerationJob.objects.filter(request__topic="Volcanoes").exists()


def test_it_accepts_an_idempotency_key_of_the_longest_length(
    teacher: Any, base_class: Any, client_for: Any, settings: Any
) -> None:
    settings.COURSEGEN_JUDGE_ENABLED = False
    body = {"base_class": str(base_class.pk), "topic": "Volcanoes", "num_modules": 1}

    response = client_for(teacher).post(
        "/api/jobs/", body, format="json", headers={"Idempotency-Key": "k" * 255}
    )

    assert response.status_code == 201


@pytest.mark.parametrize("instruction", [0, 1.5, True, ["simpler"], {"a": "b"}])
def test_regenerate_answers_400_to_an_instruction_that_is_not_a_string(
    instruction: Any, job: CourseGenerationJob, teacher: Any, client_for: Any
) -> None:
    task = job.tasks.order_by("pk").first()
    assert task is not None

    response = client_for(teacher).post(
        f"/api/jobs/{job.pk}/tasks/{task.pk}/regenerate/",
        {"instruction": instruction},
        format="json",
    )

    assert response.status_code == 400
    assert list(response.json()) == ["instruction"]
    assert not task.regeneration_requests.exists()


@pytest.mark.parametrize("field", ["topic", "audience", "instructions"])
def test_submit_answers_400_to_text_fields_that_are_not_strings(
    field: str, teacher: Any, base_class: Any, client_for: Any
) -> None:
    body = {"base_class": str(base_class.pk), "topic": "Volcanoes", field: 12345}

    response = client_for(teacher).post("/api/jobs/", body, format="json")

    assert response.status_code == 400
    assert field in response.json()


@pytest.mark.parametrize("path", ["/api/jobs/not-a-uuid/", "/api/nothing-here/"])
def test_an_unknown_api_path_answers_a_json_404(path: str) -> None:
    response = APIClient().get(path)

    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


@pytest.mark.parametrize("remote_addr", ["", "unix:/run/gunicorn.sock"])
def test_a_client_without_a_usable_address_is_throttled_not_failed(
    remote_addr: str, settings: Any, ratelimit_clock_still: float
) -> None:
    # django-ratelimit read REMOTE_ADDR itself: empty, ImproperlyConfigured; not an address,
    # ValueError; missing (the fuzzer's WSGI client), KeyError: each a 500.
    settings.COURSEGEN_API_RATE = "2/m"
    client = APIClient(REMOTE_ADDR=remote_addr)

    # The schema: open to anonymous callers, so the throttle runs (elsewhere 401 comes first).
    statuses = [client.get("/api/schema/").status_code for _ in range(3)]

    assert statuses == [200, 200, 429]


def test_the_throttles_count_a_request_without_an_address_as_0_0_0_0() -> None:
    request = HttpRequest()  # no REMOTE_ADDR at all

    assert client_ip(request) == "0.0.0.0"
    request.META["REMOTE_ADDR"] = "2001:db8::1"
    assert client_ip(request) == "2001:db8::1"


# --- Found in review (2026-12-08): lone surrogates, too many fields, NUL characters -------------
def _wsgi(method: str, path: str, body: bytes = b"", **options: Any) -> tuple[int, Any]:
    """Through the application coursegen/wsgi.py serves; the status and the parsed JSON body."""
    status, answer = _call(application, method, path, body, **options)
    return int(status.split()[0]), json.loads(answer)


@pytest.fixture
def token(teacher: Any) -> dict[str, str]:
    from rest_framework.authtoken.models import Token

    return {"Authorization": f"Token {Token.objects.create(user=teacher).key}"}


@pytest.mark.parametrize(
    "body",
    [
        '{"base_class": "%s", "topic": "Volcanoes", "level": "\\ud800"}',  # echoed by the error
        '{"base_class": "%s", "topic": "Volcanoes", "urgency": "\\udfff"}',
        '{"base_class": "%s", "topic": "Volcanoes", "\\ud800": 1}',
    ],
)
def test_it_answers_400_to_a_lone_surrogate_in_a_submit(
    body: str, base_class: Any, token: dict[str, str]
) -> None:
    # A choice's error message echoed "\ud800" back and the response could not be encoded: 500.
    status, answer = _wsgi("POST", "/api/jobs/", (body % base_class.pk).encode(), headers=token)

    assert status == 400, answer
    assert "surrogate" in answer["detail"]
    assert not CourseGenerationJob.objects.exists()


@pytest.mark.parametrize(
    "body", ['{"rating": 4, "\\ud800": 1}', '{"rating": 4, "flags": ["\\ud800"]}']
)
def test_it_answers_400_to_a_lone_surrogate_in_feedback_and_regeneration(
    body: str, job: CourseGenerationJob, token: dict[str, str]
) -> None:
    task = job.tasks.get(kind="lesson_section")
    before = (CourseEvaluation.objects.count(), RegenerationRequest.objects.count())
    for path in (
        f"/api/jobs/{job.pk}/feedback/",
        f"/api/jobs/{job.pk}/tasks/{task.pk}/regenerate/",
    ):
        status, answer = _wsgi("POST", path, body.encode(), headers=token)

        assert status == 400, (path, answer)
    assert (CourseEvaluation.objects.count(), RegenerationRequest.objects.count()) == before


def test_the_parser_accepts_text_beyond_the_basic_plane() -> None:
    # A surrogate pair in JSON is one character (an emoji): text, not a lone surrogate.
    data = BoundedJSONParser().parse(
        io.BytesIO('{"topic": "Plants \\ud83c\\udf31 und Bl\u00fcten"}'.encode()), parser_context={}
    )

    assert data == {"topic": "Plants \U0001f331 und Bl\u00fcten"}


def test_it_answers_json_400_to_a_form_with_too_many_fields(token: dict[str, str]) -> None:
    body = b"&".join(b"f%d=1" % i for i in range(1100))  # DATA_UPLOAD_MAX_NUMBER_FIELDS: 1,000

    status, answer = _wsgi(
        "POST", "/api/jobs/", body, content_type="application/x-www-form-urlencoded", headers=token
    )

    assert status == 400 and "DATA_UPLOAD_MAX_NUMBER_FIELDS" in answer["detail"]
    assert not CourseGenerationJob.objects.exists()


def test_a_token_with_a_nul_is_a_401_not_a_500() -> None:
    # gunicorn refuses a NUL in a header; another server might not.
    status, answer = _wsgi("GET", "/api/jobs/", headers={"Authorization": "Token abc\x00"})

    assert status == 401 and answer["detail"] == "Invalid token."


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/admin/generation/coursegenerationjob/", "status__exact=%00"),
        ("/api/jobs/", "status=a%00b"),
        ("/api/jobs/\x00/", ""),
    ],
)
def test_a_nul_in_the_url_is_a_400_before_django(path: str, query: str) -> None:
    # %00 passes gunicorn; the admin's list filters then raised DataError (PostgreSQL), a 500.
    status, answer = _wsgi("GET", path, query=query)

    assert status == 400 and "NUL" in answer["detail"]


@pytest.mark.parametrize("value", ["1_0", "\u0661", "\uff11", " 1 ", "1.0", 1.0, "+3", "0x5", True])
def test_it_answers_400_to_a_number_that_is_not_a_plain_integer(
    value: Any, job: CourseGenerationJob, base_class: Any, teacher: Any, client_for: Any
) -> None:
    # DRF's IntegerField read "1_0" as 10 and Arabic-Indic or full-width digits as numbers.
    client = client_for(teacher)
    body = {"base_class": str(base_class.pk), "topic": "Volcanoes", "num_modules": value}
    submit = client.post("/api/jobs/", body, format="json")
    rating = client.post(f"/api/jobs/{job.pk}/feedback/", {"rating": value}, format="json")

    assert submit.status_code == 400 and "num_modules" in submit.json(), submit.content
    assert rating.status_code == 400 and "rating" in rating.json(), rating.content
    assert CourseGenerationJob.objects.count() == 1  # the fixture's


def test_it_takes_an_integer_as_a_json_number_or_as_digits_in_a_form(
    base_class: Any, teacher: Any, client_for: Any
) -> None:
    client = client_for(teacher)
    as_json = client.post(
        "/api/jobs/",
        {"base_class": str(base_class.pk), "topic": "Volcanoes", "num_modules": 2},
        format="json",
    )
    as_form = client.post(
        "/api/jobs/",
        f"base_class={base_class.pk}&topic=Rivers&num_modules=3",
        content_type="application/x-www-form-urlencoded",
    )

    assert as_json.status_code == 201 and as_form.status_code == 201, as_form.content
    modules = sorted(job.request["num_modules"] for job in CourseGenerationJob.objects.all())
    assert modules == [2, 3]


@pytest.mark.parametrize("field", ["topic", "audience"])
@pytest.mark.parametrize("value", ["\u200b\u200b\u200b", "\ufeff\u200d\u2060", "...", "- - -"])
def test_it_answers_400_to_a_name_with_no_letter_or_digit(
    field: str, value: str, base_class: Any, teacher: Any, client_for: Any
) -> None:
    body = {"base_class": str(base_class.pk), "topic": "Volcanoes", field: value}

    response = client_for(teacher).post("/api/jobs/", body, format="json")

    assert response.status_code == 400 and field in response.json(), response.content
    assert not CourseGenerationJob.objects.exists()
