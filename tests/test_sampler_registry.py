"""One place knows the samplers (ddpm_core/sampler_specs.py): every surface reads it, so a sampler
added to the registry alone, or anywhere but the registry, fails here."""

from __future__ import annotations

import re
import typing

import pytest

from api.app import create_app
from contract.settings import REPO_ROOT, Settings
from contract.spec import Sampler
from ddpm_core.cli import build_parser
from ddpm_core.sampler_specs import (
    DEFAULT_SAMPLER,
    FAST_SAMPLER,
    MAX_HISTORY,
    SAMPLER_NAMES,
    SAMPLER_SPECS,
    check_class_label,
    sampler_spec,
)
from ddpm_core.samplers import SAMPLER_CLASSES


def test_the_registry_is_consistent() -> None:
    assert len(set(SAMPLER_NAMES)) == len(SAMPLER_NAMES) and DEFAULT_SAMPLER in SAMPLER_NAMES
    assert sampler_spec(FAST_SAMPLER).chooses_steps and max(spec.history for spec in SAMPLER_SPECS) == MAX_HISTORY
    for spec in SAMPLER_SPECS:
        assert spec.description and spec.title and spec.min_steps >= 1
        assert spec.chooses_steps == (spec.default_steps is not None)
    with pytest.raises(ValueError, match="expected one of ddpm, ddim"):
        sampler_spec("euler")


def test_the_library_the_contract_and_the_cli_offer_the_registrys_samplers() -> None:
    assert set(SAMPLER_CLASSES) == set(SAMPLER_NAMES)
    assert typing.get_args(Sampler) == SAMPLER_NAMES
    for command in ("sample", "evaluate"):
        parser = build_parser(only=command)
        subcommand = parser._subparsers._group_actions[0].choices[command]
        (option,) = [action for action in subcommand._actions if "--sampler" in action.option_strings]
        assert tuple(option.choices) == SAMPLER_NAMES and option.default == DEFAULT_SAMPLER


def test_openapi_lists_the_registrys_samplers_with_a_line_each() -> None:
    schema = create_app(Settings(api_keys="")).openapi()
    schemas = schema["components"]["schemas"]
    generate = schemas["GenerateRequest"]["properties"]["sampler"]
    assert generate["enum"] == list(SAMPLER_NAMES) and generate["default"] == DEFAULT_SAMPLER
    assert generate["x-enumDescriptions"] == {spec.name: spec.description for spec in SAMPLER_SPECS}
    assert all(spec.description in generate["description"] for spec in SAMPLER_SPECS)
    assert schemas["JobSpec"]["properties"]["sampler"]["enum"] == list(SAMPLER_NAMES)


def test_the_page_names_no_sampler_of_its_own() -> None:
    """The page fills its sampler list from GET /models: no sampler's name is written in it."""
    static = REPO_ROOT / "api" / "static"
    for path in (static / "index.html", static / "app.js"):
        text = path.read_text()
        for name in SAMPLER_NAMES:
            assert not re.search(rf"[\"'`]{name}[\"'`]", text), f"{path.name} names the sampler {name!r}"


def test_one_class_label_check() -> None:
    assert check_class_label(9, 10) == 9
    for label in (10, -1, True):  # the null label is not a class; nor is a bool
        with pytest.raises(ValueError, match="must be between 0 and 9"):
            check_class_label(label, 10)
    with pytest.raises(ValueError, match="unconditional"):
        check_class_label(0, 0)
