# dbwatch container image: multi-stage, slim Python base, non-root, read-only-root friendly.
# Build (needs a registry that serves python:3.12-slim-bookworm, which this repository's CI cannot reach):
#   docker build -t dbwatch:0.1.0 .
# Run (read-only root; state such as log positions goes to the writable DBWATCH_STATE_DIR):
#   docker run --read-only -v dbwatch-state:/var/lib/dbwatch -v "$PWD/dbwatch.yaml:/etc/dbwatch/dbwatch.yaml:ro" \
#     -e DATABASE_URL -p 9839:9839 dbwatch:0.1.0

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the package needs: a change to tests/, bench/ or deploy/ never invalidates this layer.
COPY pyproject.toml README.md ./
COPY dbwatch ./dbwatch
# The `daemon` extra: the sidecar's dependencies (an app image installs `dbwatch[hook]` instead). Every one ships
# manylinux wheels (asyncpg, aiohttp, bcrypt, PyYAML), so no compiler is needed.
# pip byte-compiles while installing, so the read-only runtime never needs to write a .pyc.
RUN python -m venv /opt/dbwatch \
    && /opt/dbwatch/bin/pip install --no-cache-dir ".[daemon]" \
    && /opt/dbwatch/bin/dbwatch --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="dbwatch" \
      org.opencontainers.image.description="Sidecar monitor for async Python web apps on PostgreSQL" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric UID/GID so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 65532 dbwatch \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin dbwatch \
    && mkdir -p /var/lib/dbwatch /etc/dbwatch \
    && chown 65532:65532 /var/lib/dbwatch
COPY --from=build /opt/dbwatch /opt/dbwatch
ENV PATH=/opt/dbwatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DBWATCH_STATE_DIR=/var/lib/dbwatch
USER 65532:65532
WORKDIR /var/lib/dbwatch
EXPOSE 9839
# Kubernetes probes /healthz and /readyz itself; an image health check would only duplicate them.
HEALTHCHECK NONE
ENTRYPOINT ["dbwatch", "run"]
CMD ["--config", "/etc/dbwatch/dbwatch.yaml"]
