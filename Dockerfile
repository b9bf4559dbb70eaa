# One image for web, worker, beat and flower; docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
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
RUN useradd --create-home coursegen && mkdir -p /app/.cache && chown -R coursegen /app
USER coursegen
EXPOSE 8000
CMD ["gunicorn", "coursegen.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3"]
