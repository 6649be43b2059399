"""One data step: ``ddpm train --dataset mnist`` and ``ddpm evaluate`` find MNIST with the same
function; without it both end in one line naming ``ddpm data fetch mnist --dir DIR``, download
nothing (a mirror configured in the environment is never asked) and write nothing."""

from __future__ import annotations

import pytest

import ddpm_core.cli as cli
from ddpm_core.data.mnist_source import MIRRORS_ENV
from tests.core.test_cli import tiny_checkpoint
from tests.core.test_data_fetch import mirror  # noqa: F401 (the fixture)


def run(capsys, *args) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = cli.main([str(arg) for arg in args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("given_dir", [False, True])
def test_train_without_mnist_names_the_fetch_and_downloads_nothing(
    tmp_path,
    monkeypatch,
    capsys,
    mirror,  # noqa: F811 (the fixture imported above)
    given_dir,
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(MIRRORS_ENV, mirror.url)
    where = tmp_path / "elsewhere" if given_dir else "data/mnist"
    options = ["--data-dir", where] if given_dir else []
    code, lines = run(capsys, "train", "--dataset", "mnist", *options, "--out", tmp_path / "run", "--no-progress")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("ddpm: error: ") and f"ddpm data fetch mnist --dir {where}" in lines[0]
    assert mirror.requests == []
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("given_dir", [False, True])
def test_evaluate_without_mnist_names_the_same_fetch(tmp_path, monkeypatch, capsys, given_dir):
    monkeypatch.chdir(tmp_path)
    checkpoint = tiny_checkpoint(tmp_path / "digits.safetensors", num_classes=10)
    where = tmp_path / "elsewhere" if given_dir else "data/mnist"
    options = ["--data-dir", where] if given_dir else []
    code, lines = run(capsys, "evaluate", "--checkpoint", checkpoint, *options, "--no-progress")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("ddpm: error: ") and f"ddpm data fetch mnist --dir {where}" in lines[0]


def test_a_partial_data_directory_names_what_is_missing(tmp_path, capsys):
    from tests.core.conftest import write_mnist_like

    data = write_mnist_like(tmp_path / "mnist", [0, 1])
    (data / "t10k-labels-idx1-ubyte.gz").unlink()
    checkpoint = tiny_checkpoint(tmp_path / "digits.safetensors", num_classes=10)
    code, lines = run(capsys, "evaluate", "--checkpoint", checkpoint, "--data-dir", data, "--no-progress")
    assert code == 2 and len(lines) == 1 and "lacks t10k-labels-idx1-ubyte.gz" in lines[0], lines
