"""``/openapi.json`` declares API-key security only where a key is enforced.

The key dependencies (:mod:`api.deps`) declare their schemes on every route that uses them, but
whether a key is needed depends on the settings: writes (POST, DELETE) need one when
``DDPM_API_KEYS`` is set, reads of jobs only with ``DDPM_PROTECT_READS`` as well. The schema is
pruned to match once, when first built, so a keyless service does not claim security (and its
401 answers) that it never enforces, and a client or fuzzer reads what the service does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from contract.settings import Settings

WRITE_METHODS = frozenset({"post", "put", "patch", "delete"})


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` return the schema with security only where ``settings`` enforce it."""
    build = app.openapi
    writes = bool(settings.api_key_set)
    reads = writes and settings.protect_reads

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = prune_security(build(), writes=writes, reads=reads)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def prune_security(schema: dict[str, Any], *, writes: bool, reads: bool) -> dict[str, Any]:
    """``schema`` without the security (and 401 answers) of operations whose key is not enforced,
    and without schemes no operation uses any more."""
    used: set[str] = set()
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            if "security" not in operation:
                continue
            enforced = writes if method in WRITE_METHODS else reads
            if enforced:
                used.update(name for requirement in operation["security"] for name in requirement)
                continue
            del operation["security"]
            operation.get("responses", {}).pop("401", None)
    components = schema.get("components", {})
    schemes = components.get("securitySchemes", {})
    for name in [name for name in schemes if name not in used]:
        del schemes[name]
    if "securitySchemes" in components and not schemes:
        del components["securitySchemes"]
    return schema
