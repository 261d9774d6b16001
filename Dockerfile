# Trafficinator: one image for the web process (the default command) and both kinds of
# django-q2 workers (compose.yaml and deploy/kubernetes/ run them with another command).
# Build: docker build -t trafficinator .

# --- build stage: the virtual environment --------------------------------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY requirements.txt /tmp/requirements.txt
# Wheels only: every pinned package ships them for Linux, so no compiler is ever needed
# (and none is installed, here or in the final image).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --only-binary=:all: -r /tmp/requirements.txt

# --- final stage ------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    TRAFFICINATOR_PYTHON=/opt/venv/bin/python \
    DEBUG=0 \
    TRAFFICINATOR_DATA_DIR=/data \
    STATIC_ROOT=/app/staticfiles \
    SERVE_COLLECTSTATIC=0 \
    SERVE_BIND=0.0.0.0:8000

RUN groupadd --system --gid 10001 trafficinator \
    && useradd --system --uid 10001 --gid trafficinator --home-dir /data --shell /usr/sbin/nologin trafficinator \
    && mkdir /data && chown trafficinator:trafficinator /data

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The code belongs to root and is read-only for the app user; only /data is writable
# (SQLite when no DATABASE_URL is set).
COPY . /app
# Static files are collected (hashed, compressed) at build time, and our code compiled
# (pip compiled the packages), so the container starts fast and works with a read-only
# root file system. The key below exists only for this build step.
RUN SECRET_KEY=build-time-only-not-a-secret python manage.py collectstatic --noinput --verbosity 0 \
    && python -m compileall -q /app

USER 10001:10001
EXPOSE 8000
# The web process answers and reaches its database. Worker containers replace this with
# `manage.py health --local-cluster` (compose.yaml, deploy/kubernetes/).
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ['SERVE_BIND'].rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/health/web/', timeout=4)"]
CMD ["scripts/serve"]
