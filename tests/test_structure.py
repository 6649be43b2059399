"""The structure's import rules (pyproject's ``[tool.importlinter]``), checked on the real import
graph: ``serve`` on top, ``api`` and ``worker`` side by side and independent, the ``contract``
they share beneath them, ``ddpm_core`` at the bottom; no torch in the API's or contract's graph."""

from __future__ import annotations

import grimp
from importlinter.cli import lint_imports

from tests.service.conftest import REPO

PACKAGES = ("serve", "api", "worker", "contract", "ddpm_core")


def test_import_contracts_are_kept(monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    assert lint_imports(no_cache=True, no_logo=True) == 0


def test_the_graph_has_the_layers_the_contracts_name() -> None:
    graph = grimp.build_graph(*PACKAGES, include_external_packages=True)

    def imports(source: str, target: str) -> bool:
        return graph.chain_exists(importer=source, imported=target, as_packages=True)

    # the rules hold because the edges exist where they should and nowhere else
    assert imports("api", "contract") and imports("worker", "contract") and imports("contract", "ddpm_core")
    assert imports("worker", "torch") and not imports("api", "torch") and not imports("contract", "torch")
    for upper, lower in [("api", "worker"), ("worker", "api"), ("ddpm_core", "contract"), ("ddpm_core", "serve")]:
        assert not imports(upper, lower), f"{upper} imports {lower}"
    for package in ("api", "worker", "contract", "ddpm_core"):
        assert not imports(package, "serve")
