"""The HTTP API of the generation service (FastAPI). This package never imports torch."""
