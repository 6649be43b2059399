# The API image: FastAPI + the web page, no torch (the API only reads checkpoint headers).
# Build from the repository root:  docker build -f docker/api.Dockerfile -t ddpm-service-api .
#
# The README installs with `pip install torch==2.13.0 -e '.[service]'`; this image installs the
# same '[service]' extra, read from pyproject.toml, and the project itself with --no-deps, so
# that torch (a core dependency of ddpm_core) stays out of it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DDPM_MODEL_DIR=/app/checkpoints

WORKDIR /app
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['service']))" > /tmp/service-requirements.txt \
    && pip install -r /tmp/service-requirements.txt
COPY ddpm_core ./ddpm_core
COPY api ./api
COPY contract ./contract
RUN pip install --no-deps . \
    && python -c "import api.app, sys; assert 'torch' not in sys.modules" \
    && useradd --create-home --uid 10001 app \
    && mkdir -p /app/checkpoints
USER app

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["uvicorn", "api.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--timeout-graceful-shutdown", "10"]
