# The CPU worker image (no NVIDIA GPU needed).
# Build from the repository root:  docker build -f docker/worker-cpu.Dockerfile -t ddpm-service-worker-cpu .
#
# torch comes from TORCH_INDEX_URL (default: PyTorch's CPU wheel index, about 200 MB) with the public
# index as a fallback: where the CPU index cannot be reached, pip warns and installs the public index's
# CUDA build instead (several GB, same code). `--build-arg TORCH_INDEX_URL=` skips the CPU index.
# The dependencies are installed before the code is copied, so a code edit reuses that layer.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DDPM_MODEL_DIR=/app/checkpoints \
    DDPM_DEVICE=cpu \
    DDPM_COMPILE_CACHE_DIR=/var/cache/ddpm

# a C++ compiler: the worker compiles its forward (torch inductor writes and builds C++ on the CPU)
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}" \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join([d for d in p['dependencies'] if not d.startswith('torch')] + p['optional-dependencies']['service']))" > /tmp/requirements.txt \
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

HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD celery -A worker.celery_app:app inspect ping --destination "worker@$(hostname)" --timeout 10 | grep -q pong
CMD ["celery", "-A", "worker.celery_app:app", "worker", "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--hostname", "worker@%h"]
