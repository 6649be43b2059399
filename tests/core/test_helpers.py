"""The small shared helpers: pick_device and atomic_path."""

import pytest
import torch

from ddpm_core.atomic import atomic_path
from ddpm_core.device import pick_device


def test_pick_device_auto_and_named():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert (
        pick_device().type == expected and pick_device(None).type == expected and pick_device("auto").type == expected
    )
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "nonsense:0"])
def test_pick_device_refuses_unknown_names(name):
    with pytest.raises(ValueError, match="unknown device"):
        pick_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_pick_device_refuses_cuda_without_cuda():
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda:0")


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    with atomic_path(target) as temporary:
        assert temporary.parent == target.parent and temporary.name.endswith(".tmp")
        temporary.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    assert [path.name for path in target.parent.iterdir()] == ["file.bin"]


def test_atomic_path_keeps_the_old_file_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["file.bin"]


def test_atomic_path_when_nothing_was_written(tmp_path):
    target = tmp_path / "file.bin"
    with pytest.raises(FileNotFoundError), atomic_path(target):
        pass
    assert not target.exists()
