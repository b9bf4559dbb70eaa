# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Tests run against the real local services; override on the command line if yours differ.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/coursegen
TEST_REDIS_URL ?= redis://127.0.0.1:6379/14
TEST_ENV := DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	CELERY_BROKER_URL=$(TEST_REDIS_URL) CELERY_RESULT_BACKEND=$(TEST_REDIS_URL) \
	COURSEGEN_PROVIDER=offline DJANGO_DEBUG=false

.PHONY: venv demo test lint typecheck check migrations-check worker beat flower web clean bench-admission

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Generates one 4x3 course end to end on the embedded default: SQLite, eager Celery, offline provider.
demo: $(STAMP)
	env -u DATABASE_URL -u CELERY_BROKER_URL -u CELERY_RESULT_BACKEND $(BIN)/python manage.py migrate --noinput -v 0
	env -u DATABASE_URL -u CELERY_BROKER_URL -u CELERY_RESULT_BACKEND $(BIN)/python manage.py seed_demo
	env -u DATABASE_URL -u CELERY_BROKER_URL -u CELERY_RESULT_BACKEND $(BIN)/python manage.py generate_course \
		--user demo-teacher --topic "Photosynthesis and plant energy" --modules 4 --lessons 3 \
		--audience "secondary school students" --level beginner

test: $(STAMP)
	$(TEST_ENV) $(BIN)/pytest $(PYTEST_ARGS)

# Prints the median and p99 time of one admission check, on its own PostgreSQL database.
BENCH_DB ?= coursegen_bench
BENCH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/$(BENCH_DB)
bench-admission: $(STAMP)
	createdb -h 127.0.0.1 -U postgres $(BENCH_DB) 2>/dev/null || true
	DATABASE_URL=$(BENCH_DATABASE_URL) $(BIN)/python manage.py migrate --noinput -v 0 --skip-checks
	DATABASE_URL=$(BENCH_DATABASE_URL) $(BIN)/python manage.py bench_admission --skip-checks $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

migrations-check: $(STAMP)
	env -u DATABASE_URL $(BIN)/python manage.py makemigrations --check --dry-run

check: lint typecheck migrations-check

web: $(STAMP)
	$(BIN)/python manage.py runserver 127.0.0.1:8000

worker: $(STAMP)
	$(BIN)/celery -A coursegen worker -P threads -c 32 -l info -E

beat: $(STAMP)
	$(BIN)/celery -A coursegen beat -l info

flower: $(STAMP)
	$(BIN)/celery -A coursegen flower --address=127.0.0.1 --port=5555

clean:
	rm -rf $(VENV) db.sqlite3 .pytest_cache .mypy_cache .ruff_cache
