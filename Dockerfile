# One image for web, worker, beat and flower; docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# pango and a font for WeasyPrint, which lays out the PDF export.
RUN apt-get update && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 \
    fonts-dejavu-core && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY coursegen ./coursegen
COPY accounts ./accounts
COPY generation ./generation
COPY ratelimits ./ratelimits
COPY monitoring ./monitoring
COPY perf ./perf
RUN pip install '.[server]'
COPY manage.py ./
COPY templates ./templates
RUN python manage.py collectstatic --noinput -v 0
RUN useradd --create-home coursegen && mkdir -p /app/.cache && chown -R coursegen /app
USER coursegen
EXPOSE 8000
# gevent, 2 processes (coursegen/gunicorn_conf.py; WEB_WORKER_CLASS, WEB_WORKERS).
CMD ["gunicorn", "-c", "python:coursegen.gunicorn_conf", "coursegen.wsgi:application"]
