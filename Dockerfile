# kernos: one image for every process (serve, worker, db migrate, sim).
#   docker build -t kernos .     or     docker compose up  (see compose.yaml)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# the package only (no dev extras); examples/ stays beside it, importable from the workdir
COPY pyproject.toml README.md ./
COPY src/ ./src/
RUN pip install . && rm -rf src

COPY examples/ ./examples/

# a non-root user; .kernos/ is where the examples and the default SQLite database write
RUN useradd --create-home --uid 10001 kernos \
    && mkdir -p /app/.kernos \
    && chown -R kernos:kernos /app/.kernos
USER kernos

EXPOSE 8000

# liveness of `kernos serve` (other commands override or disable it in compose.yaml)
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["kernos"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
