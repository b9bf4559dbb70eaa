"""coursegen settings: everything comes from the environment, with defaults for the embedded demo.

With nothing set, coursegen runs on a SQLite file, Celery runs tasks eagerly in-process and the
offline provider generates content, so `make demo` needs no services. Production sets
DATABASE_URL, CELERY_BROKER_URL, REDIS_URL and (for a real LLM) COURSEGEN_PROVIDER=openai.
Every helper below fails loudly on a malformed value rather than falling back silently.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()


def env_str(name: str, default: str) -> str:
    return str(env.str(name, default=default)).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = env.str(name, default="").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = env.str(name, default="").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = env.str(name, default="").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default).lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = env.str(name, default="").strip()
    if raw == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_url(name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
    value = env.str(name, default="").strip() or default
    if value is None:
        return None
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in schemes:
        raise ImproperlyConfigured(
            f"{name} must be a URL with scheme {', '.join(schemes)}; got {value.split('@')[-1]!r}"
        )
    return value


# --- Django core -----------------------------------------------------------------------------
DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "insecure-dev-key-set-DJANGO_SECRET_KEY-in-production")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
# The default key is public: outside DEBUG, the system check coursegen.E001 (and the web process
# at start-up) refuses it; the Makefile keeps a generated local one in .secret-key.

# HTTPS in production (docs/operations.md#https). All off by default: the demo and the tests
# speak plain HTTP on 127.0.0.1.
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    # Only behind a proxy that sets X-Forwarded-Proto itself (nginx in compose overwrites it).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
# Behind a proxy every request comes from the proxy's address: the per-IP throttles
# (django-ratelimit) then read the client's address from this header, e.g. X-Real-IP, which the
# proxy must overwrite (deploy/nginx.conf does). Empty: REMOTE_ADDR.
DJANGO_CLIENT_IP_HEADER = env_str("DJANGO_CLIENT_IP_HEADER", "")
if DJANGO_CLIENT_IP_HEADER:
    RATELIMIT_IP_META_KEY = "coursegen.client_ip.client_ip"
SECURE_REDIRECT_EXEMPT = [r"^api/health/", r"^health/"]  # load balancers probe over plain HTTP
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "accounts",
    "generation",
    "ratelimits",
    "monitoring",
    "perf",
]

MIDDLEWARE = [
    "monitoring.correlation.CorrelationIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's (the dashboard's) and the API docs' static files in production, where
    # Django does not; `collectstatic` gathers them into STATIC_ROOT (the image does at build).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A view that waits past DATABASE_POOL_TIMEOUT for a connection answers 503 + Retry-After.
    "coursegen.overload.DatabaseBusyMiddleware",
]

ROOT_URLCONF = "coursegen.urls"
WSGI_APPLICATION = "coursegen.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------
# The embedded default is a SQLite file beside manage.py; PostgreSQL is the production record.
_db_url = env_url(
    "DATABASE_URL",
    f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
    ("sqlite", "postgres", "postgresql", "pgsql", "psql"),
)
_default_db: dict[str, Any] = environ.Env.db_url_config(_db_url)
IS_POSTGRES = _default_db["ENGINE"] == "django.db.backends.postgresql"
# Under gevent (gunicorn's default worker here, coursegen/gunicorn_conf.py) Django's connections are
# per greenlet: without a pool each request in flight opens a connection of its own, and a burst
# of requests or event streams (up to WEB_WORKER_CONNECTIONS per process) passes PostgreSQL's
# max_connections ("too many clients", 500s). The pool bounds them, so it is on by default there.
_gevent_monkey = sys.modules.get("gevent.monkey")
_UNDER_GEVENT = bool(_gevent_monkey and _gevent_monkey.is_module_patched("socket"))
if IS_POSTGRES:
    if _UNDER_GEVENT and not env_bool("DATABASE_POOL", True):
        raise ImproperlyConfigured(
            "DATABASE_POOL=false under gevent opens a connection per request in flight: "
            "leave DATABASE_POOL on (DATABASE_POOL_MAX_SIZE bounds the connections per process)"
        )
    if env_bool("DATABASE_POOL", _UNDER_GEVENT):
        # Celery closes Django's connection around every task (celery#4116); a pool makes it cheap.
        _default_db["CONN_MAX_AGE"] = 0
        _default_db.setdefault("OPTIONS", {})["pool"] = {
            "min_size": env_int("DATABASE_POOL_MIN_SIZE", 2, minimum=0),
            "max_size": env_int("DATABASE_POOL_MAX_SIZE", 40, minimum=1),
            "timeout": env_float("DATABASE_POOL_TIMEOUT", 10.0, minimum=0.1),
        }
        _pool = _default_db["OPTIONS"]["pool"]
        if _pool["min_size"] > _pool["max_size"]:
            raise ImproperlyConfigured(
                "DATABASE_POOL_MIN_SIZE must not exceed DATABASE_POOL_MAX_SIZE"
            )
    else:
        _default_db["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
        _default_db["CONN_HEALTH_CHECKS"] = True
    # Parameters bound by the server, and a statement run 5 times on a connection prepared there
    # (psycopg's automatic preparation): PostgreSQL then skips parsing and planning the hot
    # path's statements, about a third of its CPU per course (docs/performance.md). Django's
    # default binds on the client with no prepared statements, for poolers that cannot keep
    # them: set DATABASE_PREPARED_STATEMENTS=false behind a transaction-mode PgBouncer.
    if env_bool("DATABASE_PREPARED_STATEMENTS", True):
        _default_db.setdefault("OPTIONS", {}).update(server_side_binding=True, prepare_threshold=5)
else:
    # SQLite serialises writers: WAL lets the demo's progress bar read while tasks write, and
    # IMMEDIATE transactions wait for the write lock instead of failing to upgrade to it.
    _default_db.setdefault("OPTIONS", {}).update(
        timeout=20, transaction_mode="IMMEDIATE", init_command="PRAGMA journal_mode=WAL;"
    )
DATABASES = {"default": _default_db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (django-ratelimit and the circuit breaker need a shared one in production) ---------
REDIS_URL = env_url("REDIS_URL", None, ("redis", "rediss", "unix"))
# Connections per process to REDIS_URL, per pool (the cache's, the concurrency limiter's).
# redis-py's plain pool raises "Too many connections" past its maximum (100 unless set); a worker
# has hundreds of threads, so these pools make a thread wait for a free one instead.
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 100, minimum=1)
REDIS_POOL_TIMEOUT_S = env_float("REDIS_POOL_TIMEOUT_S", 10.0, minimum=0.1)
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "coursegen.cache.SharedClientRedisCache",  # one client per pool
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "coursegen",
            "OPTIONS": {
                "pool_class": "redis.BlockingConnectionPool",
                "max_connections": REDIS_MAX_CONNECTIONS,
                "timeout": REDIS_POOL_TIMEOUT_S,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Auth, i18n, static -----------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = env_str("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Compressed copies at collectstatic; no manifest, so templates render before it has run.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Members (not only staff) sign in here to read course pages; the admin keeps its own login.
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/api/jobs/"

# --- DRF and OpenAPI --------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.UncompiledTokenAuthentication",  # DRF's, in one statement
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # drf-spectacular's, documenting the errors every operation may answer (401, 404, 429 ...).
    "DEFAULT_SCHEMA_CLASS": "coursegen.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "coursegen.drf.LimitOffsetPagination",  # capped: API_PAGE_MAX_LIMIT
    "PAGE_SIZE": env_int("API_PAGE_SIZE", 50, minimum=1),
    # JSON bodies: at most API_MAX_BODY_BYTES and API_JSON_MAX_DEPTH levels (else 413 / 400).
    "DEFAULT_PARSER_CLASSES": [
        "coursegen.drf.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "coursegen.drf.exception_handler",
    # Every API view: COURSEGEN_API_RATE per client, counted in the cache by django-ratelimit.
    "DEFAULT_THROTTLE_CLASSES": ["ratelimits.throttling.ApiRateThrottle"],
}
# DRF tokens older than this many hours are refused (401); 0 keeps them for ever.
API_TOKEN_TTL_HOURS = env_int("API_TOKEN_TTL_HOURS", 720, minimum=0)
# Sign-in attempts (admin and members' login), per client IP and per username; over it, 429.
COURSEGEN_LOGIN_RATE = env_str("COURSEGEN_LOGIN_RATE", "10/m")
if not re.fullmatch(r"\d+/\d*[smhd]", COURSEGEN_LOGIN_RATE):
    raise ImproperlyConfigured(f"COURSEGEN_LOGIN_RATE={COURSEGEN_LOGIN_RATE!r} must look like 10/m")
API_PAGE_MAX_LIMIT = env_int("API_PAGE_MAX_LIMIT", 200, minimum=1)
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 256 * 1024, minimum=1024)
API_JSON_MAX_DEPTH = env_int("API_JSON_MAX_DEPTH", 32, minimum=2)
if REST_FRAMEWORK["PAGE_SIZE"] > API_PAGE_MAX_LIMIT:  # type: ignore[operator]
    raise ImproperlyConfigured("API_PAGE_MAX_LIMIT must be at least API_PAGE_SIZE")
SPECTACULAR_SETTINGS = {
    "TITLE": "coursegen API",
    "DESCRIPTION": "Submit course generation jobs and follow them to a finished course.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI served from our own static files: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Names for choice sets that share a field name (otherwise named by a hash).
    "ENUM_NAME_OVERRIDES": {
        "WindowEnum": "ratelimits.models.Window",
        "ThrottleWindowEnum": "ratelimits.serializers.THROTTLE_WINDOWS",
    },
}

# --- Celery -----------------------------------------------------------------------------------
# No broker configured: tasks run eagerly in-process (the embedded default used by `make demo`).
CELERY_BROKER_URL = env_url(
    "CELERY_BROKER_URL", None, ("redis", "rediss", "amqp", "amqps", "memory")
)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", CELERY_BROKER_URL is None)
if CELERY_BROKER_URL is None:
    CELERY_BROKER_URL = "memory://localhost/"
# RabbitMQ (docs/operations.md#broker) holds the messages; Redis stays the result backend.
RABBITMQ_BROKER = CELERY_BROKER_URL.startswith("amqp")
CELERY_RESULT_BACKEND = env_url(
    "CELERY_RESULT_BACKEND",
    CELERY_BROKER_URL
    if CELERY_BROKER_URL.startswith("redis")
    else (
        REDIS_URL if RABBITMQ_BROKER and str(REDIS_URL).startswith("redis") else "cache+memory://"
    ),
    ("redis", "rediss", "cache+memory", "rpc", "db+postgresql", "db+sqlite"),
)
if RABBITMQ_BROKER and not CELERY_TASK_ALWAYS_EAGER and CELERY_RESULT_BACKEND == "cache+memory://":
    # Chord counters must be shared by every worker, or no course is ever assembled.
    raise ImproperlyConfigured("a RabbitMQ broker needs CELERY_RESULT_BACKEND (or REDIS_URL)")
if not CELERY_TASK_ALWAYS_EAGER and not (CELERY_RESULT_BACKEND or "").startswith("redis"):
    # Chord header tasks store no result (generation/tasks.py): the Redis backend counts a chord
    # down in the chord's own keys, while the others (rpc, db+, cache+) poll the header's stored
    # results with chord_unlock, which would never see them, and the course never be assembled.
    raise ImproperlyConfigured(
        "CELERY_RESULT_BACKEND must be Redis (redis:// or rediss://) when tasks run on workers:"
        " chords are counted down there"
    )
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_TASK_IGNORE_RESULT = True  # chords count down in their own keys (planning._send_chord)
CELERY_RESULT_EXPIRES = 6 * 3600
# One Redis result backend per process, not per thread: Celery keeps a backend (with its own
# connection pool) per thread by default, so a threads-pool worker opened a result-backend
# connection in each of its hundreds of threads, the first time each sent or closed a chord.
# redis-py's pool is thread-safe and workers never wait on results (no pub/sub consumer).
CELERY_RESULT_BACKEND_THREAD_SAFE = str(CELERY_RESULT_BACKEND).startswith("redis")
# A task is acknowledged after it ran, so a killed worker's task is delivered again; the rows in
# PostgreSQL make the repeat harmless (claims with leases, succeeded rows return at once).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# 1: a worker reserves no more messages than it has threads, so the rest wait in the broker, where
# priorities order them (a prefetched message is out of the broker's reordering).
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 1, minimum=1)
# On a lost broker connection a threads-pool worker cannot cancel the tasks in hand (Celery 6's
# default): they finish, their acks fail and the broker redelivers them; leases make that harmless.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# After a reconnect Celery lowers the prefetch and raises it again with a basic.qos per ack. Under
# the threads pool that RPC ran off the event loop's thread, on the consumer's connection: after a
# RabbitMQ restart the loop hung mid-frame and the broker dropped it for missed heartbeats three
# minutes later (make chaos-rabbitmq; celery#9512 names the same switch). Full prefetch at once.
CELERY_WORKER_ENABLE_PREFETCH_COUNT_REDUCTION = False
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 300, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 360, minimum=1)
# Priorities: our scale runs 0 first and 9 last, as Celery's Redis transport orders them.
# RabbitMQ runs the highest number first (up to the queue's x-max-priority), so every send goes
# through generation.messages.broker_priority, and settings' own sends through _on_broker.
MAX_PRIORITY = 9


def _on_broker(priority: int) -> int:
    return MAX_PRIORITY - priority if RABBITMQ_BROKER else priority


# Generation messages carry their job's priority; housekeeping (dispatch, reconcile, finalize)
# is sent at 0 explicitly. A route's priority would not apply: the default wins over routes.
CELERY_TASK_DEFAULT_PRIORITY = _on_broker(5)
HOUSEKEEPING_PRIORITY = 0
# One queue; on RabbitMQ a classic priority queue (quorum queues ignore priorities before 4.0).
# Declaring x-max-priority on an existing "celery" queue declared without it fails
# (PRECONDITION_FAILED): delete that queue once when switching (docs/operations.md#broker).
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = (
    Queue(
        "celery",
        Exchange("celery", type="direct"),
        routing_key="celery",
        queue_arguments={"x-max-priority": MAX_PRIORITY},
    ),
)
CELERY_TASK_QUEUE_MAX_PRIORITY = MAX_PRIORITY  # any other queue a deployment routes to
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any]
if RABBITMQ_BROKER:
    # Publisher confirms: a send returns once RabbitMQ has the (persistent) message, so a message
    # sent while the broker goes down raises instead of vanishing.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Must exceed the hard time limit, or Redis re-delivers tasks that are still running.
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1),
        "priority_steps": list(range(MAX_PRIORITY + 1)),
        "sep": ":",
        "queue_order_strategy": "priority",
        # Each task acks on the consumer's pool; past this many at once redis-py raises "Too many
        # connections" (it does not wait), so keep it above the worker concurrency. A connection
        # opens only when that many are in use at once.
        "max_connections": env_int("CELERY_BROKER_MAX_CONNECTIONS", 2000, minimum=10),
    }
# RabbitMQ closes the channel of a consumer that holds a message unacknowledged longer than its
# consumer_timeout (30 min by default), and redelivers everything on it. With acks late a message
# is held for its countdown (a deferral) plus its run: checked below, after the deferral cap.
RABBITMQ_CONSUMER_TIMEOUT_S = env_int("RABBITMQ_CONSUMER_TIMEOUT_S", 1800, minimum=1)
# Task events cost every task three Redis publishes (received, started, succeeded): off unless
# asked for. Flower switches them on in running workers when it starts (its enable_events).
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("CELERY_WORKER_SEND_TASK_EVENTS", False)
CELERY_TASK_SEND_SENT_EVENT = env_bool("CELERY_TASK_SEND_SENT_EVENT", False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {}  # filled in below, after coursegen settings
if CELERY_TASK_SOFT_TIME_LIMIT >= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured("CELERY_TASK_SOFT_TIME_LIMIT must be below CELERY_TASK_TIME_LIMIT")
if CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 1 << 30) <= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured("CELERY_VISIBILITY_TIMEOUT must exceed CELERY_TASK_TIME_LIMIT")

# --- coursegen --------------------------------------------------------------------------------
COURSEGEN_PROVIDER = env_choice("COURSEGEN_PROVIDER", "offline", ("offline", "openai"))
OPENAI_API_KEY = env_str("OPENAI_API_KEY", "")
OPENAI_BASE_URL = env_url("OPENAI_BASE_URL", None, ("http", "https"))
OPENAI_TIMEOUT_S = env_float("OPENAI_TIMEOUT_S", 120.0, minimum=1.0)
# One retry policy: ours (generation/retry.py). The SDK's own retries stay off.
OPENAI_MAX_RETRIES = env_int("OPENAI_MAX_RETRIES", 0, minimum=0)
# Sampling sent with every call; empty leaves the server's default. A small local model wants
# temperature 0 and a seed (make demo-local sets both).
OPENAI_TEMPERATURE = (
    env_float("OPENAI_TEMPERATURE", 0.0, minimum=0.0)
    if env_str("OPENAI_TEMPERATURE", "").strip()
    else None
)
OPENAI_SEED = env_int("OPENAI_SEED", 0) if env_str("OPENAI_SEED", "").strip() else None
# The output token limit of a call that names none itself; 0: none (the server's default).
OPENAI_MAX_TOKENS = env_int("OPENAI_MAX_TOKENS", 0, minimum=0)
if COURSEGEN_PROVIDER == "openai" and not OPENAI_API_KEY and OPENAI_BASE_URL is None:
    raise ImproperlyConfigured(
        "COURSEGEN_PROVIDER=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL)"
    )

# Content safety (docs/safety.md): requests and every generated task pass a moderation step.
# "" moderates with COURSEGEN_PROVIDER; "off" turns moderation off (never for a school).
COURSEGEN_MODERATION_PROVIDER = env_choice(
    "COURSEGEN_MODERATION_PROVIDER", "", ("", "offline", "openai", "off")
)
if COURSEGEN_MODERATION_PROVIDER == "openai" and not OPENAI_API_KEY and OPENAI_BASE_URL is None:
    raise ImproperlyConfigured(
        "COURSEGEN_MODERATION_PROVIDER=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL)"
    )
COURSEGEN_MODERATION_MODEL = env_str("COURSEGEN_MODERATION_MODEL", "omni-moderation-latest")

COURSEGEN_MODEL_COMPLEX = env_str("COURSEGEN_MODEL_COMPLEX", "gpt-4.1-mini")
COURSEGEN_MODEL_SIMPLE = env_str("COURSEGEN_MODEL_SIMPLE", "gpt-4.1-nano")


def env_prices(name: str) -> dict[str, tuple[str, str, str]]:
    """Parse "local=0,my-model=0.20/0.05/0.80": USD per million input, cached input and output
    tokens per model; one number is all three (0: a local model costs nothing)."""
    prices: dict[str, tuple[str, str, str]] = {}
    for part in filter(None, (p.strip() for p in env_str(name, "").split(","))):
        model, _, spec = part.partition("=")
        numbers = [n.strip() for n in spec.split("/")]
        try:
            values = [float(n) for n in numbers]
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {part!r}: a price is not a number") from exc
        if not model.strip() or len(values) not in (1, 3) or min(values) < 0:
            raise ImproperlyConfigured(
                f"{name}: {part!r} needs model=price or model=input/cached/output (USD per "
                "million tokens, not negative)"
            )
        if len(numbers) == 1:
            numbers *= 3
        prices[model.strip()] = (numbers[0], numbers[1], numbers[2])
    return prices


# Prices of models not in generation/pricing.py's table, or overriding it (a local model: 0).
COURSEGEN_MODEL_PRICES = env_prices("COURSEGEN_MODEL_PRICES")

# Offline provider: latency scale 0 is instant; 1 is the full latency model.
COURSEGEN_OFFLINE_LATENCY_SCALE = env_float("COURSEGEN_OFFLINE_LATENCY_SCALE", 0.0, minimum=0.0)
# Fault rates, e.g. "rate_limit=0.05,server_error=0.02,timeout=0.01,malformed=0.02,invalid=0.1".
COURSEGEN_OFFLINE_FAULTS = env_str("COURSEGEN_OFFLINE_FAULTS", "")
COURSEGEN_OFFLINE_SEED = env_int("COURSEGEN_OFFLINE_SEED", 0)
# Optional file that gets one line per offline provider call (fault tests count calls with it).
COURSEGEN_OFFLINE_CALL_LOG = env_str("COURSEGEN_OFFLINE_CALL_LOG", "")
# Emulated provider rate limit per model (requests, tokens per minute; 0 = none), shared in Redis.
COURSEGEN_OFFLINE_RPM = env_int("COURSEGEN_OFFLINE_RPM", 0, minimum=0)
COURSEGEN_OFFLINE_TPM = env_int("COURSEGEN_OFFLINE_TPM", 0, minimum=0)

# The web process's GIL switch interval (Python's default is 0.005 s): measured by make bench, a
# tenth of it halves submit latency under load (coursegen/runtime.py).
WEB_GIL_SWITCH_INTERVAL_S = env_float("WEB_GIL_SWITCH_INTERVAL_S", 0.0005, minimum=0.0001)
# gc.freeze() once web and worker processes have started (coursegen/runtime.py): full collections
# then skip the start-up heap, which was the submit latency's tail in make bench.
GC_FREEZE_AFTER_STARTUP = env_bool("GC_FREEZE_AFTER_STARTUP", True)
# Celery worker threads under SCHED_BATCH on Linux (coursegen/runtime.py): the same CPU share,
# but a worker thread that wakes up does not preempt a running web process. Off by default: in
# make bench it cut the submit tails and cost courses an hour (docs/performance.md).
WORKER_SCHED_BATCH = env_bool("WORKER_SCHED_BATCH", False)
COURSEGEN_GLOBAL_MAX_RUNNING_JOBS = env_int("COURSEGEN_GLOBAL_MAX_RUNNING_JOBS", 100, minimum=1)
# A dispatcher run asked for but not started absorbs further asks for at most this long.
COURSEGEN_DISPATCH_ASK_TTL_S = env_int("COURSEGEN_DISPATCH_ASK_TTL_S", 5, minimum=1)
# Queue aging: a waiting job's priority improves by one step per this many seconds of waiting.
COURSEGEN_QUEUE_AGING_S = env_float("COURSEGEN_QUEUE_AGING_S", 60.0, minimum=1.0)
# Progress as server-sent events (GET /api/jobs/<id>/events/, generation/events.py): each web
# process reads the jobs its streams follow once every COURSEGEN_EVENTS_POLL_S; a comment line
# every COURSEGEN_EVENTS_HEARTBEAT_S keeps a quiet stream open; a stream ends after
# COURSEGEN_EVENTS_MAX_S (clients reconnect after COURSEGEN_EVENTS_RETRY_S, SSE's `retry`).
COURSEGEN_EVENTS_POLL_S = env_float("COURSEGEN_EVENTS_POLL_S", 1.0, minimum=0.05)
COURSEGEN_EVENTS_HEARTBEAT_S = env_float("COURSEGEN_EVENTS_HEARTBEAT_S", 15.0, minimum=0.1)
COURSEGEN_EVENTS_MAX_S = env_float("COURSEGEN_EVENTS_MAX_S", 300.0, minimum=1.0)
COURSEGEN_EVENTS_RETRY_S = env_float("COURSEGEN_EVENTS_RETRY_S", 2.0, minimum=0.1)
# Rate limits. Job limits per role live in the database (admin: Rate limit policies).
# Request-level throttle for every API view, per user (per IP before login): "<n>/<m|s|h|d>".
COURSEGEN_API_RATE = env_str("COURSEGEN_API_RATE", "120/m")
if not re.fullmatch(r"\d+/\d*[smhd]", COURSEGEN_API_RATE):
    raise ImproperlyConfigured(f"COURSEGEN_API_RATE={COURSEGEN_API_RATE!r} must look like 120/m")
# Retry-After for the concurrent-jobs limit, which frees when a job ends (no fixed reset time).
COURSEGEN_RATELIMIT_CONCURRENT_RETRY_S = env_int(
    "COURSEGEN_RATELIMIT_CONCURRENT_RETRY_S", 30, minimum=1
)
# Organisation budgets (ratelimits/budgets.py): what one generation task is expected to cost, to
# weigh admitted work that has not reached the ledger yet (a default course is 43 tasks).
COURSEGEN_BUDGET_TASK_ESTIMATE_USD = env_float(
    "COURSEGEN_BUDGET_TASK_ESTIMATE_USD", 0.003, minimum=0.0
)
RATELIMIT_IP_META_KEY = "coursegen.drf.client_ip"  # REMOTE_ADDR, robust to a missing one
RATELIMIT_FAIL_OPEN = True  # the throttle guards the web tier; admission is exact in PostgreSQL
COURSEGEN_TASK_LEASE_S = env_int("COURSEGEN_TASK_LEASE_S", CELERY_TASK_TIME_LIMIT + 60, minimum=2)
COURSEGEN_MAX_VALIDATION_ATTEMPTS = env_int("COURSEGEN_MAX_VALIDATION_ATTEMPTS", 3, minimum=1)
COURSEGEN_TRANSIENT_MAX_ATTEMPTS = env_int("COURSEGEN_TRANSIENT_MAX_ATTEMPTS", 5, minimum=1)
COURSEGEN_TRANSIENT_MAX_WAIT_S = env_float("COURSEGEN_TRANSIENT_MAX_WAIT_S", 30.0, minimum=0.0)
COURSEGEN_TRANSIENT_BASE_WAIT_S = env_float("COURSEGEN_TRANSIENT_BASE_WAIT_S", 1.0, minimum=0.0)
# Circuit breaker per model (generation/breaker.py), shared by all workers through the cache.
COURSEGEN_BREAKER_WINDOW_S = env_int("COURSEGEN_BREAKER_WINDOW_S", 60, minimum=10)
COURSEGEN_BREAKER_MIN_CALLS = env_int("COURSEGEN_BREAKER_MIN_CALLS", 10, minimum=1)
COURSEGEN_BREAKER_FAILURE_RATE = env_float("COURSEGEN_BREAKER_FAILURE_RATE", 0.5, minimum=0.01)
COURSEGEN_BREAKER_OPEN_S = env_float("COURSEGEN_BREAKER_OPEN_S", 15.0, minimum=0.1)
# While a model's breaker is open, send its tasks to the other tier's model instead of waiting.
COURSEGEN_BREAKER_FALLBACK_TIER = env_bool("COURSEGEN_BREAKER_FALLBACK_TIER", False)
# Provider calls in flight per model, shared by all workers in Redis, moved by AIMD
# (generation/concurrency.py). Needs REDIS_URL; without it calls are not limited.
COURSEGEN_CONCURRENCY_ENABLED = env_bool("COURSEGEN_CONCURRENCY_ENABLED", True)
COURSEGEN_CONCURRENCY_INITIAL = env_float("COURSEGEN_CONCURRENCY_INITIAL", 128.0, minimum=1.0)
COURSEGEN_CONCURRENCY_MAX = env_float("COURSEGEN_CONCURRENCY_MAX", 1024.0, minimum=1.0)
COURSEGEN_CONCURRENCY_INCREASE = env_float("COURSEGEN_CONCURRENCY_INCREASE", 1.0, minimum=0.0)
COURSEGEN_CONCURRENCY_DECREASE = env_float("COURSEGEN_CONCURRENCY_DECREASE", 0.5, minimum=0.01)
# Decrease when x-ratelimit-remaining-requests/-tokens fall below this fraction of the limit.
COURSEGEN_CONCURRENCY_LOW_REMAINING = env_float(
    "COURSEGEN_CONCURRENCY_LOW_REMAINING", 0.05, minimum=0.0
)
COURSEGEN_CONCURRENCY_LEASE_S = env_float(
    "COURSEGEN_CONCURRENCY_LEASE_S", OPENAI_TIMEOUT_S + 30, minimum=1.0
)
COURSEGEN_CONCURRENCY_WAIT_S = env_float("COURSEGEN_CONCURRENCY_WAIT_S", 60.0, minimum=0.0)
# Calls waiting for a permit go by their job's aged priority; a job this many priority steps
# better when all its tasks are done (in proportion before), so jobs far along free slots sooner.
COURSEGEN_PROVIDER_PROGRESS_STEPS = env_float("COURSEGEN_PROVIDER_PROGRESS_STEPS", 1.0, minimum=0.0)
if COURSEGEN_CONCURRENCY_DECREASE >= 1:
    raise ImproperlyConfigured("COURSEGEN_CONCURRENCY_DECREASE must be below 1")
# Client-side pacing (generation/pacer.py): calls spend this share of the requests and tokens per
# minute the provider advertises (x-ratelimit-limit-*), in rank order, holding at most this many
# seconds of it for a burst. Needs REDIS_URL; a provider that advertises no limit is not paced.
COURSEGEN_PACER_ENABLED = env_bool("COURSEGEN_PACER_ENABLED", True)
COURSEGEN_PACER_SHARE = env_float("COURSEGEN_PACER_SHARE", 0.97, minimum=0.01)
COURSEGEN_PACER_BURST_S = env_float("COURSEGEN_PACER_BURST_S", 1.0, minimum=0.0)
if COURSEGEN_PACER_SHARE > 1:
    raise ImproperlyConfigured("COURSEGEN_PACER_SHARE must be at most 1")
# A task that cannot reach the provider is deferred (rescheduled with a growing back-off of at
# most COURSEGEN_TASK_DEFER_MAX_S) until it has been deferred for this long: an outage shorter
# than the budget is waited out, however many tries it takes.
COURSEGEN_TASK_DEFER_BUDGET_S = env_float("COURSEGEN_TASK_DEFER_BUDGET_S", 1800.0, minimum=1.0)
COURSEGEN_TASK_DEFER_MAX_S = env_float("COURSEGEN_TASK_DEFER_MAX_S", 60.0, minimum=0.1)
if (
    RABBITMQ_BROKER
    and CELERY_TASK_TIME_LIMIT + COURSEGEN_TASK_DEFER_MAX_S >= RABBITMQ_CONSUMER_TIMEOUT_S
):
    raise ImproperlyConfigured(
        "RABBITMQ_CONSUMER_TIMEOUT_S (the broker's consumer_timeout) must exceed "
        "CELERY_TASK_TIME_LIMIT + COURSEGEN_TASK_DEFER_MAX_S"
    )
# The threads pool cannot enforce Celery's time limits, so each task keeps its own deadline. It
# comes well before the soft limit, which under prefork cuts a call short: the deadline stops
# the task between calls and defers it, the soft limit is only the backstop.
COURSEGEN_TASK_DEADLINE_S = env_float(
    "COURSEGEN_TASK_DEADLINE_S", 0.8 * CELERY_TASK_SOFT_TIME_LIMIT, minimum=1.0
)
if COURSEGEN_TASK_DEADLINE_S >= CELERY_TASK_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured(
        "COURSEGEN_TASK_DEADLINE_S must be below CELERY_TASK_SOFT_TIME_LIMIT"
    )
# Reconciler (celery beat): re-send work whose message was lost after this long without progress.
COURSEGEN_RECONCILE_INTERVAL_S = env_float("COURSEGEN_RECONCILE_INTERVAL_S", 10.0, minimum=0.5)
COURSEGEN_REDISPATCH_AFTER_S = env_float("COURSEGEN_REDISPATCH_AFTER_S", 120.0, minimum=1.0)
# Each re-send since a worker last picked the task up doubles that wait, up to this: a message
# that only waits behind a busy broker is not re-sent every couple of minutes.
COURSEGEN_REDISPATCH_MAX_S = env_float("COURSEGEN_REDISPATCH_MAX_S", 1800.0, minimum=1.0)
# The job watchdog: a running job with no live task and no progress for this long is failed with
# a critical alert (staff can resume it). Longer than a lease and the longest re-send wait.
COURSEGEN_JOB_WATCHDOG_S = env_float("COURSEGEN_JOB_WATCHDOG_S", 3600.0, minimum=10.0)
# A job whose tasks all ended is finalized by its chord body within moments; the reconciler only
# finalizes it itself (a lost chord) when its last task ended at least this long ago.
COURSEGEN_FINALIZE_GRACE_S = env_float("COURSEGEN_FINALIZE_GRACE_S", 15.0, minimum=0.0)
COURSEGEN_IDEMPOTENCY_TTL_S = env_int("COURSEGEN_IDEMPOTENCY_TTL_S", 24 * 3600, minimum=60)
if COURSEGEN_REDISPATCH_MAX_S < COURSEGEN_REDISPATCH_AFTER_S:
    raise ImproperlyConfigured(
        "COURSEGEN_REDISPATCH_MAX_S must be at least COURSEGEN_REDISPATCH_AFTER_S"
    )
if max(COURSEGEN_TASK_LEASE_S, COURSEGEN_REDISPATCH_MAX_S) >= COURSEGEN_JOB_WATCHDOG_S:
    raise ImproperlyConfigured(
        "COURSEGEN_JOB_WATCHDOG_S must exceed COURSEGEN_TASK_LEASE_S and COURSEGEN_REDISPATCH_MAX_S"
    )
if COURSEGEN_TASK_LEASE_S <= COURSEGEN_TASK_DEADLINE_S:
    raise ImproperlyConfigured("COURSEGEN_TASK_LEASE_S must exceed COURSEGEN_TASK_DEADLINE_S")
# Structured outputs: re-ask policy (generation/llm.py), content checks (generation/checks.py).
# Tokens (input + output) one run of a task may spend, re-asks and part repairs included.
COURSEGEN_TASK_TOKEN_BUDGET = env_int("COURSEGEN_TASK_TOKEN_BUDGET", 60_000, minimum=1_000)
# Two questions of a course are near-duplicates at this rapidfuzz token_sort_ratio (0-100) or above.
COURSEGEN_DUPLICATE_SIMILARITY = env_float("COURSEGEN_DUPLICATE_SIMILARITY", 90.0, minimum=50.0)
# The question types assessments use (a content check, the prompt and the grammar). A grammar
# cannot make a multiple-choice answer one of the options: a small local model is better off with
# true_false,short_answer (make demo-local).
_QUESTION_TYPES = ("multiple_choice", "true_false", "short_answer")
COURSEGEN_QUESTION_TYPES = env_list("COURSEGEN_QUESTION_TYPES", list(_QUESTION_TYPES))
if not COURSEGEN_QUESTION_TYPES or set(COURSEGEN_QUESTION_TYPES) - set(_QUESTION_TYPES):
    raise ImproperlyConfigured(
        f"COURSEGEN_QUESTION_TYPES takes some of {', '.join(_QUESTION_TYPES)}"
    )


def env_grade_bands(name: str, default: str) -> dict[str, tuple[float, float]]:
    """Parse "beginner=4-12,intermediate=6-14,advanced=7-18" (Flesch-Kincaid grades per level)."""
    bands: dict[str, tuple[float, float]] = {}
    for part in filter(None, (p.strip() for p in env_str(name, default).split(","))):
        level, _, span = part.partition("=")
        low, _, high = span.partition("-")
        try:
            bands[level.strip()] = (float(low), float(high))
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {part!r} is not level=low-high") from exc
    if set(bands) != {"beginner", "intermediate", "advanced"} or any(
        low >= high for low, high in bands.values()
    ):
        raise ImproperlyConfigured(
            f"{name} needs low-high bands for beginner, intermediate, advanced"
        )
    return bands


# Reading level of lesson prose, as a Flesch-Kincaid grade band per course level.
COURSEGEN_READING_GRADE_BANDS = env_grade_bands(
    "COURSEGEN_READING_GRADE_BANDS", "beginner=4-12,intermediate=6-14,advanced=7-18"
)


def env_scores(name: str, default: str) -> dict[str, int]:
    """Parse "accuracy=4,clarity_examples=3" (a 1-5 minimum per judge criterion; the names are
    checked against the rubric by a system check, generation/quality/checks.py)."""
    scores: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in env_str(name, default).split(","))):
        criterion, _, value = part.partition("=")
        try:
            scores[criterion.strip()] = int(value)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {part!r} is not criterion=score") from exc
        if not 1 <= scores[criterion.strip()] <= 5:
            raise ImproperlyConfigured(f"{name}: {part!r}: scores run from 1 to 5")
    return scores


# The quality judge (generation/quality/): an LLM scores each lesson of a finished course against
# a teaching rubric, after finalize, on its own Celery tasks; off, courses get the heuristic only.
COURSEGEN_JUDGE_ENABLED = env_bool("COURSEGEN_JUDGE_ENABLED", True)
COURSEGEN_JUDGE_TIER = env_choice("COURSEGEN_JUDGE_TIER", "simple", ("simple", "complex"))
COURSEGEN_JUDGE_MODEL = env_str("COURSEGEN_JUDGE_MODEL", "")  # empty: the tier's model
# A lesson below these is regenerated once with the judge's feedback, judged again, and alerted
# on if still below: a 1-5 minimum per criterion, and a 0-1 minimum of the verdict's overall.
COURSEGEN_JUDGE_MIN_SCORES = env_scores(
    "COURSEGEN_JUDGE_MIN_SCORES",
    "objectives_taught=3,accuracy=4,audience_fit=3,question_quality=3,clarity_examples=3",
)
COURSEGEN_JUDGE_MIN_OVERALL = env_float("COURSEGEN_JUDGE_MIN_OVERALL", 0.6, minimum=0.0)
if COURSEGEN_JUDGE_MIN_OVERALL > 1:
    raise ImproperlyConfigured("COURSEGEN_JUDGE_MIN_OVERALL is a 0-1 score")
COURSEGEN_JUDGE_REGENERATE = env_bool("COURSEGEN_JUDGE_REGENERATE", True)
# Celery priority of the judge's messages: after generation's (5), so a busy judge never delays
# a course.
COURSEGEN_JUDGE_PRIORITY = env_int("COURSEGEN_JUDGE_PRIORITY", 8, minimum=0)
if COURSEGEN_JUDGE_PRIORITY > MAX_PRIORITY:
    raise ImproperlyConfigured("COURSEGEN_JUDGE_PRIORITY must be 0 (first) to 9 (last)")


def env_kind_days(name: str, default: str, kinds: tuple[str, ...]) -> dict[str, float]:
    """Parse "outline=30,lesson_section=14" (days per task kind; every kind named once)."""
    days: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in env_str(name, default).split(","))):
        kind, _, value = part.partition("=")
        try:
            days[kind.strip()] = float(value)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {part!r} is not kind=days") from exc
    if set(days) != set(kinds) or any(v <= 0 for v in days.values()):
        raise ImproperlyConfigured(f"{name} needs a positive number of days for {', '.join(kinds)}")
    return days


# The content cache (docs/cache.md): validated outputs reused for the same (or, with the
# similarity layer, an equivalent) request. Off: every task calls the provider.
COURSEGEN_CACHE_ENABLED = env_bool("COURSEGEN_CACHE_ENABLED", True)
# Only outputs scoring at least this task-level quality (0-1) are stored.
COURSEGEN_CACHE_MIN_QUALITY = env_float("COURSEGEN_CACHE_MIN_QUALITY", 0.75, minimum=0.0)
# Time to live per cached kind, in days; a hit starts it again (sliding expiry).
COURSEGEN_CACHE_TTL_DAYS = env_kind_days(
    "COURSEGEN_CACHE_TTL_DAYS",
    "outline=30,lesson_section=30,assessment=30,brain_bytes=30",
    ("outline", "lesson_section", "assessment", "brain_bytes"),
)
# The beat task deleting expired and outdated entries: how often, and rows per DELETE.
COURSEGEN_CACHE_PURGE_INTERVAL_S = env_float(
    "COURSEGEN_CACHE_PURGE_INTERVAL_S", 3600.0, minimum=10.0
)
COURSEGEN_CACHE_PURGE_BATCH = env_int("COURSEGEN_CACHE_PURGE_BATCH", 1000, minimum=1)
# The Batch API path (docs/batch.md): roles whose members may submit with "urgency": "batch".
COURSEGEN_BATCH_ROLES = env_list("COURSEGEN_BATCH_ROLES", ["student", "teacher", "admin"])
if unknown_roles := set(COURSEGEN_BATCH_ROLES) - {"student", "teacher", "admin"}:
    raise ImproperlyConfigured(
        f"COURSEGEN_BATCH_ROLES: unknown roles {sorted(unknown_roles)} (student, teacher, admin)"
    )
# The similarity layer (docs/cache.md#the-similarity-layer): an equivalent request, asked in
# other words, is served too. Embeddings come through the provider seam: "local" is the embedded
# all-MiniLM-L6-v2 int8 ONNX model (no network), "openai" the provider's embeddings endpoint,
# "off" leaves only the exact layer.
COURSEGEN_EMBEDDING_PROVIDER = env_choice(
    "COURSEGEN_EMBEDDING_PROVIDER", "local", ("local", "openai", "off")
)
if COURSEGEN_EMBEDDING_PROVIDER == "openai" and not OPENAI_API_KEY and OPENAI_BASE_URL is None:
    raise ImproperlyConfigured(
        "COURSEGEN_EMBEDDING_PROVIDER=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL)"
    )
# "" is the provider's default (local: all-MiniLM-L6-v2-onnx-int8; openai: text-embedding-3-small).
COURSEGEN_EMBEDDING_MODEL = env_str("COURSEGEN_EMBEDDING_MODEL", "")
# A candidate is considered from this cosine on; the guards then look at its words.
COURSEGEN_CACHE_SIMILARITY_THRESHOLD = env_float(
    "COURSEGEN_CACHE_SIMILARITY_THRESHOLD", 0.85, minimum=0.0
)
if COURSEGEN_CACHE_SIMILARITY_THRESHOLD > 1.0:
    raise ImproperlyConfigured("COURSEGEN_CACHE_SIMILARITY_THRESHOLD must be 0-1")
# Guards: the least share of content words two requests must have in common, and the cosine at
# which a word one request has and the other lacks counts as a synonym of one it has.
COURSEGEN_CACHE_MIN_OVERLAP = env_float("COURSEGEN_CACHE_MIN_OVERLAP", 0.5, minimum=0.0)
COURSEGEN_CACHE_WORD_MATCH = env_float("COURSEGEN_CACHE_WORD_MATCH", 0.7, minimum=0.0)
# At most this many candidates (the newest) are scored per lookup.
COURSEGEN_CACHE_MAX_CANDIDATES = env_int("COURSEGEN_CACHE_MAX_CANDIDATES", 5000, minimum=1)
# How the nearest candidates are found: `auto` is pgvector's HNSW index where migration 0016
# found the extension, numpy elsewhere; `pgvector` insists (an error without the column).
COURSEGEN_CACHE_SEARCH = env_choice("COURSEGEN_CACHE_SEARCH", "auto", ("auto", "numpy", "pgvector"))
# How often beat submits queued batch requests and polls the batches at the provider.
COURSEGEN_BATCH_POLL_INTERVAL_S = env_float("COURSEGEN_BATCH_POLL_INTERVAL_S", 30.0, minimum=1.0)
# A line that failed or went unanswered: into the next batch, or run live at once.
COURSEGEN_BATCH_RETRY = env_choice("COURSEGEN_BATCH_RETRY", "batch", ("batch", "live"))
# A batch answer that needs a repair (re-ask, part request, flagged rewrite): the repair's call
# live at once ("live"), or as a line of the next batch ("batch": half price, another wait).
COURSEGEN_BATCH_REPAIR = env_choice("COURSEGEN_BATCH_REPAIR", "live", ("live", "batch"))
# A task's tries through batches before it runs live whatever COURSEGEN_BATCH_RETRY says.
COURSEGEN_BATCH_MAX_TRIES = env_int("COURSEGEN_BATCH_MAX_TRIES", 2, minimum=1)
# The poller's lease on one batch (a killed poller's batch is taken over after it).
COURSEGEN_BATCH_LEASE_S = env_float("COURSEGEN_BATCH_LEASE_S", 300.0, minimum=5.0)
# Work besides batch jobs' tasks that may go by batch (docs/batch.md, judge runs and regenerations):
# the judge's verdicts: "off" (live), "batch" (of courses submitted with urgency batch), "all".
COURSEGEN_BATCH_JUDGE = env_choice("COURSEGEN_BATCH_JUDGE", "off", ("off", "batch", "all"))
# Regenerations: "off" (live), "judge" (the judge's own, which no one waits for), "low" (those,
# and people's regenerations of courses of low priority or submitted with urgency batch).
COURSEGEN_BATCH_REGENERATIONS = env_choice(
    "COURSEGEN_BATCH_REGENERATIONS", "off", ("off", "judge", "low")
)
# The offline simulator's Batch API (generation/providers/offline/batches.py): where its files
# and batches live (shared by the processes of one machine), when a batch ends, and the shares
# of its lines that fail or are left unanswered at expiry (0-1).
COURSEGEN_OFFLINE_BATCH_DIR = env_str(
    "COURSEGEN_OFFLINE_BATCH_DIR", str(BASE_DIR / ".cache" / "offline-batches")
)
COURSEGEN_OFFLINE_BATCH_DELAY_S = env_float("COURSEGEN_OFFLINE_BATCH_DELAY_S", 2.0, minimum=0.0)
COURSEGEN_OFFLINE_BATCH_FAILED = env_float("COURSEGEN_OFFLINE_BATCH_FAILED", 0.0, minimum=0.0)
COURSEGEN_OFFLINE_BATCH_UNANSWERED = env_float(
    "COURSEGEN_OFFLINE_BATCH_UNANSWERED", 0.0, minimum=0.0
)
# The provider reaches those endpoints through the official openai SDK over a loopback HTTP
# server it starts in-process (127.0.0.1, a free port), as a real provider's; false: directly.
COURSEGEN_OFFLINE_BATCH_HTTP = env_bool("COURSEGEN_OFFLINE_BATCH_HTTP", True)
if COURSEGEN_OFFLINE_BATCH_FAILED + COURSEGEN_OFFLINE_BATCH_UNANSWERED > 1:
    raise ImproperlyConfigured(
        "COURSEGEN_OFFLINE_BATCH_FAILED + COURSEGEN_OFFLINE_BATCH_UNANSWERED must not exceed 1"
    )
# tiktoken reads its encodings from here; generation/tokens.py fills it from bpe-openai offline.
TIKTOKEN_CACHE_DIR = env_str("TIKTOKEN_CACHE_DIR", str(BASE_DIR / ".cache" / "tiktoken"))

CELERY_BEAT_SCHEDULE.update(
    {
        "dispatch-queued-jobs": {
            "task": "generation.tasks.dispatch_queue",
            "schedule": env_float("COURSEGEN_DISPATCH_INTERVAL_S", 5.0, minimum=0.5),
            "options": {"priority": _on_broker(HOUSEKEEPING_PRIORITY)},
        },
        "reconcile": {
            "task": "generation.tasks.reconcile",
            "schedule": COURSEGEN_RECONCILE_INTERVAL_S,
            "options": {"priority": _on_broker(HOUSEKEEPING_PRIORITY)},
        },
        "prune-logs": {"task": "monitoring.tasks.prune_logs", "schedule": 24 * 3600.0},
        "poll-batches": {
            "task": "generation.tasks.batch_poll",
            "schedule": COURSEGEN_BATCH_POLL_INTERVAL_S,
            "options": {"priority": _on_broker(HOUSEKEEPING_PRIORITY)},
        },
        "purge-expired-cache": {
            "task": "generation.tasks.cache_purge_expired",
            "schedule": COURSEGEN_CACHE_PURGE_INTERVAL_S,
            "options": {"priority": _on_broker(HOUSEKEEPING_PRIORITY)},
        },
    }
)

# --- Monitoring (monitoring/) ---------------------------------------------------------------
MONITORING_LOG_DB_LEVEL = env_choice(
    "MONITORING_LOG_DB_LEVEL", "info", ("debug", "info", "warning", "error", "critical")
).upper()
MONITORING_LOG_FLUSH_INTERVAL_S = env_float("MONITORING_LOG_FLUSH_INTERVAL_S", 1.0, minimum=0.05)
MONITORING_LOG_BATCH_SIZE = env_int("MONITORING_LOG_BATCH_SIZE", 500, minimum=1)
MONITORING_LOG_RETENTION_DAYS = env_int("MONITORING_LOG_RETENTION_DAYS", 30, minimum=1)
MONITORING_LOG_CELERY_TASKS = env_bool("MONITORING_LOG_CELERY_TASKS", True)
MONITORING_ALERT_DEDUP_WINDOW_S = env_int("MONITORING_ALERT_DEDUP_WINDOW_S", 3600, minimum=1)
MONITORING_ALERT_EMAIL = env_bool("MONITORING_ALERT_EMAIL", False)  # mail_admins on new alerts
MONITORING_CAPACITY_WARN_FRACTION = env_float(
    "MONITORING_CAPACITY_WARN_FRACTION", 0.8, minimum=0.01
)
MONITORING_QUALITY_THRESHOLD = env_float("MONITORING_QUALITY_THRESHOLD", 0.7, minimum=0.0)
MONITORING_METRICS_TOKEN = env_str("MONITORING_METRICS_TOKEN", "")  # Bearer token for /metrics
MONITORING_METRICS_WINDOW_H = env_int("MONITORING_METRICS_WINDOW_H", 24, minimum=1)
MONITORING_HEALTH_PING_TIMEOUT_S = env_float("MONITORING_HEALTH_PING_TIMEOUT_S", 1.0, minimum=0.1)
# The readiness report is computed at most once per this many seconds, shared by all callers.
MONITORING_HEALTH_CACHE_S = env_int("MONITORING_HEALTH_CACHE_S", 5, minimum=1)
# `Authorization: Bearer <token>` gets the detailed readiness report, like a staff session.
MONITORING_HEALTH_TOKEN = env_str("MONITORING_HEALTH_TOKEN", "")
# Readiness calls per client (user or IP); /health/live is not throttled.
MONITORING_HEALTH_RATE = env_str("MONITORING_HEALTH_RATE", "60/m")
if not re.fullmatch(r"\d+/\d*[smhd]", MONITORING_HEALTH_RATE):
    raise ImproperlyConfigured(
        f"MONITORING_HEALTH_RATE={MONITORING_HEALTH_RATE!r} must look like 60/m"
    )
ADMINS = [(email, email) for email in env_list("DJANGO_ADMINS", [])]
SERVER_EMAIL = env_str("DJANGO_SERVER_EMAIL", "coursegen@localhost")
# e.g. smtp://user:password@127.0.0.1:25; the default prints mails to the console.
globals().update(environ.Env.email_url_config(env_str("EMAIL_URL", "consolemail://")))

# --- Logging ----------------------------------------------------------------------------------
# The "coursegen" logger tree goes to the console and, batched by a background thread, to
# course_generation_logs (monitoring.logs.DatabaseLogHandler).
LOG_LEVEL = env_choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "correlation": {"()": "monitoring.logs.CorrelationIdFilter"},
        "quiet_events": {"()": "monitoring.logs.QuietEventsFilter"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s"}
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "level": LOG_LEVEL,
            "formatter": "plain",
            "filters": ["correlation", "quiet_events"],
        },
        "database": {
            "class": "monitoring.logs.DatabaseLogHandler",
            "level": MONITORING_LOG_DB_LEVEL,
            "flush_interval": MONITORING_LOG_FLUSH_INTERVAL_S,
            "batch_size": MONITORING_LOG_BATCH_SIZE,
        },
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "coursegen": {
            "handlers": ["console", "database"],
            "level": min(LOG_LEVEL, MONITORING_LOG_DB_LEVEL, key=logging.getLevelName),
            "propagate": False,
        },
    },
}
