"""``/openapi.json`` declares API-key security only where a key is enforced, and the models on
offer as the request bodies' ``model`` enum.

The key dependencies (:mod:`api.deps`) declare their schemes on every route that uses them, but
whether a key is needed depends on the settings: writes (POST, DELETE) need one when
``DDPM_API_KEYS`` is set, reads of jobs only with ``DDPM_PROTECT_READS`` as well. The schema is
pruned to match once, when first built, so a keyless service does not claim security (and its
401 answers) that it never enforces, and a client or fuzzer reads what the service does.

The ``model`` of ``POST /generate`` (and of ``/v1/images/generations``: image models only) is
declared as the names the model directory holds now: the schema follows the directory when a
model is added or removed, so a request the schema allows names a model that exists.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from fastapi import FastAPI

from contract.registry import ModelRegistry
from contract.samples import sample_kind
from contract.settings import Settings

logger = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"post", "put", "patch", "delete"})


def install_openapi(app: FastAPI, settings: Settings, registry: ModelRegistry) -> None:
    """Make ``app.openapi()`` return the schema with security only where ``settings`` enforce it
    and the ``model`` fields naming the models ``registry`` offers now."""
    build = app.openapi
    writes = bool(settings.api_key_set)
    reads = writes and settings.protect_reads
    base: dict[str, Any] = {}
    declared: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not base:
            base.update(prune_security(build(), writes=writes, reads=reads))
        offered = _offered(registry)
        if declared.get("models") != offered or app.openapi_schema is None:
            app.openapi_schema = declare_models(copy.deepcopy(base), *offered)
            declared["models"] = offered
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _offered(registry: ModelRegistry) -> tuple[list[str], list[str]]:
    """The names of the models on offer, and of those among them that draw images."""
    try:
        models = registry.list()
    except Exception as error:  # the schema is served all the same, with model a plain string
        logger.warning("OpenAPI: could not list the models: %s", error)
        return [], []
    names = sorted(info.name for info in models)
    images = sorted(info.name for info in models if sample_kind(info.sample_shape) == "image")
    return names, images


def declare_models(schema: dict[str, Any], names: list[str], images: list[str]) -> dict[str, Any]:
    """``schema`` with the ``model`` field of the request bodies as an enum of ``names`` (the
    images request: of ``images``); left a plain string when there is none to name."""
    bodies = schema.get("components", {}).get("schemas", {})
    for body, offered in (("GenerateRequest", names), ("ImagesRequest", images)):
        field = bodies.get(body, {}).get("properties", {}).get("model")
        if field is None or not offered:
            continue
        for branch in field.get("anyOf", [field]):
            if branch.get("type") == "string":
                branch["enum"] = list(offered)
    return schema


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
