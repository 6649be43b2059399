# The CPU worker image (no NVIDIA GPU needed), installed exactly as the README does:
#   pip install torch==2.13.0 -e '.[service]'
# Build from the repository root:  docker build -f docker/worker-cpu.Dockerfile -t ddpm-service-worker-cpu .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DDPM_MODEL_DIR=/app/checkpoints \
    DDPM_DEVICE=cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ddpm_core ./ddpm_core
COPY contract ./contract
COPY worker ./worker
RUN pip install torch==2.13.0 -e '.[service]' \
    && python -c "import torch, worker.celery_app; print('torch', torch.__version__)" \
    && useradd --create-home --uid 10001 app \
    && mkdir -p /app/checkpoints
USER app

HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD celery -A worker.celery_app:app inspect ping --destination "worker@$(hostname)" --timeout 10 | grep -q pong
CMD ["celery", "-A", "worker.celery_app:app", "worker", "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--hostname", "worker@%h"]
