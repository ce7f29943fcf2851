# The one image of every service in compose.yaml (web, worker, beat, migrate): each runs its Procfile
# line (tests/test_container_files.py checks they agree). Not built on the machine this was written on
# (no container engine there): see README, Deployment.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000 \
    STATIC_ROOT=/app/staticfiles \
    AWAKEN_METRICS_DIR=/var/lib/awaken-metrics

WORKDIR /app
RUN groupadd --system --gid 10001 awaken \
    && useradd --system --uid 10001 --gid awaken --home-dir /app --no-create-home awaken \
    && mkdir -p /app/staticfiles /var/lib/awaken-metrics \
    && chown awaken:awaken /app /app/staticfiles /var/lib/awaken-metrics

# dependencies first: a code change does not reinstall them
COPY requirements/base.txt requirements/base.txt
RUN pip install -r requirements/base.txt

COPY --chown=awaken:awaken . .
USER awaken
# static files into the image (served by whitenoise); settings need no database or Redis for this
RUN python manage.py collectstatic --noinput

EXPOSE 8000
# liveness only (/readyz also checks PostgreSQL and Redis); ALLOWED_HOSTS must include 127.0.0.1
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
# the Procfile's web line
CMD ["bash", "-c", "python manage.py collectstatic --noinput && exec bash scripts/metrics-dir.sh web python -m gunicorn awaken_project.asgi:application -c python:awaken_project.gunicorn_conf --worker-class uvicorn_worker.UvicornWorker --bind ${WEB_HOST:-0.0.0.0}:${PORT:-8000} --workers ${WEB_CONCURRENCY:-2} --timeout 0 --graceful-timeout 3"]
