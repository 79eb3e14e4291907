# media-service production image.
#   docker build -t media-service .
#   docker run -p 8000:8000 -v media-data:/data media-service
# Configuration is by environment variable; see config/example.env.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: resolve dependencies and build the wheel into a self-contained venv ---------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src

# Dependencies first, read from pyproject.toml alone, so this layer is rebuilt only when they
# change, not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && pip install -r /tmp/requirements.txt

# Install the service from a wheel, not the source tree: the venv then holds everything the
# runtime stage needs, and no build tooling or sources follow it there.
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip install --no-deps /wheels/*.whl \
 && pip check

# ---- test: the builder plus test dependencies and tests (docker compose --profile test) ---------
# Not part of the runtime image: BuildKit builds this stage only when asked for (--target test).
FROM builder AS test
RUN pip install ".[test]"
ENV PYTHONUNBUFFERED=1
CMD ["python", "-m", "pytest", "-p", "no:cacheprovider"]

# ---- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    GUNICORN_BIND=0.0.0.0:8000 \
    MEDIA_DATA_DIR=/data

# A fixed, high uid/gid that matches no host account, so files written to a bind-mounted /data
# are attributable and the process has no privileges anywhere.
RUN groupadd --system --gid 10001 media \
 && useradd --system --uid 10001 --gid media --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin media \
 && mkdir -p /data \
 && chown media:media /data

COPY --from=builder /opt/venv /opt/venv

# Code and config stay owned by root: the service can read but not rewrite itself.
WORKDIR /app
COPY app.py ./
COPY config/ ./config/

USER 10001:10001

# The embedded SQLite database and file blobs live here when no MongoDB/S3 is configured;
# declared so they outlive the container even without an explicit mount.
VOLUME ["/data"]
EXPOSE 8000

# Liveness only (/healthz makes no backend calls): a database outage should not get the container
# killed. Readiness (/readyz) belongs to the orchestrator, e.g. docker-compose.yml. Python,
# because slim images have no curl; the empty ProxyHandler keeps an inherited HTTP_PROXY from
# routing a loopback probe elsewhere.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8000/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

CMD ["gunicorn", "--config", "config/gunicorn.conf.py", "app:app"]
