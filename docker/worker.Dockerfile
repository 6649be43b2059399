# The GPU worker image: on a PyTorch CUDA base, which already has torch, so the project is
# installed with `pip install '.[service]'` (the README's install without the CPU torch pin).
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t ddpm-service-worker .
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DDPM_MODEL_DIR=/app/checkpoints \
    DDPM_DEVICE=auto

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ddpm_core ./ddpm_core
COPY contract ./contract
COPY worker ./worker
RUN pip install '.[service]' \
    && python -c "import torch, worker.celery_app; print('torch', torch.__version__)" \
    && useradd --create-home --uid 10001 app \
    && mkdir -p /app/checkpoints
USER app

# a thread pool of DDPM_JOBS_IN_FLIGHT threads feeding one batching engine; nothing forks after CUDA starts
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD celery -A worker.celery_app:app inspect ping --destination "worker@$(hostname)" --timeout 10 | grep -q pong
CMD ["celery", "-A", "worker.celery_app:app", "worker", "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--hostname", "worker@%h"]
