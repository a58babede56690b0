# Model drift exporter: the FastAPI service, its drift scheduler and the `exporter` CLI.
# Build:  docker build -t model-drift-exporter .
# Run:    docker run --rm -p 127.0.0.1:8000:8000 model-drift-exporter
FROM python:3.11.11-slim-bookworm

ENV DO_NOT_TRACK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EXPORTER_DATA_DIR=/data

RUN groupadd --system --gid 10001 exporter \
 && useradd --system --uid 10001 --gid exporter --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin exporter

WORKDIR /app

# Only what the package build needs: the source stays root-owned and read-only for the service user.
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip install . \
 && mkdir -p /data \
 && chown exporter:exporter /data

# Demo model, reference data and the SQLite prediction log live here (EXPORTER_DATA_DIR).
VOLUME ["/data"]

USER exporter

EXPOSE 8000

# The demo trains its model on the first start, hence the start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# Inside the container the service must bind 0.0.0.0, or nothing outside the container (the published port,
# Prometheus on the compose network) can reach it. Exposure to the host is limited where the port is published:
# docker-compose.yml publishes it on 127.0.0.1 only.
CMD ["exporter", "serve", "--host", "0.0.0.0", "--port", "8000"]
