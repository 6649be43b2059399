# The GPU worker image: on a PyTorch CUDA base, which already has torch, so only the project's
# other dependencies are installed (before the code is copied: a code edit reuses that layer).
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t ddpm-service-worker .
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DDPM_MODEL_DIR=/app/checkpoints \
    DDPM_DEVICE=cuda \
    DDPM_COMPILE_CACHE_DIR=/var/cache/ddpm

WORKDIR /app
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join([d for d in p['dependencies'] if not d.startswith('torch')] + p['optional-dependencies']['service']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY ddpm_core ./ddpm_core
COPY contract ./contract
COPY worker ./worker
RUN pip install --no-deps . \
    && python -c "import torch, worker.celery_app; print('torch', torch.__version__)" \
    && useradd --create-home --uid 10001 app \
    && mkdir -p /app/checkpoints /var/cache/ddpm \
    && chown app /var/cache/ddpm
USER app

# a thread pool of DDPM_JOBS_IN_FLIGHT threads feeding one batching engine; nothing forks after CUDA starts
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD celery -A worker.celery_app:app inspect ping --destination "worker@$(hostname)" --timeout 10 | grep -q pong
CMD ["celery", "-A", "worker.celery_app:app", "worker", "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--hostname", "worker@%h"]
