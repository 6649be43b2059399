"""Folders of images: class subfolders or a flat folder, sizes, colour, and one-line errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_core.data import DatasetError, load_image_folder


def write_png(path, size=(64, 64), colour=(200, 30, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def test_class_subfolders_are_classes_and_other_files_are_ignored(tmp_path):
    write_png(tmp_path / "tulip" / "a.png", (16, 16), (255, 0, 0))
    write_png(tmp_path / "tulip" / "deeper" / "b.jpg", (16, 16), (255, 0, 0))  # nested images count
    write_png(tmp_path / "daisy" / "c.png", (16, 16), (0, 0, 255))
    (tmp_path / "daisy" / "notes.txt").write_text("not an image")
    (tmp_path / "daisy" / "deeper").mkdir()
    (tmp_path / "daisy" / "deeper" / "labels.csv").write_text("x")
    (tmp_path / "daisy" / ".DS_Store").write_bytes(b"\0\1")
    write_png(tmp_path / ".cache" / "thumb.png", (8, 8))  # hidden folder: ignored
    (tmp_path / "empty").mkdir()  # a subfolder without images is not a class
    data = load_image_folder(tmp_path)
    assert data.class_names == ["daisy", "tulip"] and len(data) == 3 and data.sample_shape == (3, 16, 16)
    images, labels = data.sample_batch(3, torch.Generator().manual_seed(0))
    assert sorted(labels.tolist()) == [0, 1, 1]
    blue = images[labels == 0][0]
    assert blue[2].eq(1).all() and blue[0].eq(-1).all()


def test_a_flat_folder_is_unconditional(tmp_path):
    for index in range(4):
        write_png(tmp_path / f"flower_{index}.png", (64, 64), (10 * index, 100, 200))
    (tmp_path / "README.txt").write_text("flowers")
    data = load_image_folder(tmp_path)
    assert data.class_names == [] and data.sample_shape == (3, 64, 64) and len(data) == 4
    assert data.name == f"folder:{tmp_path}"


def test_mixed_sizes_need_an_image_size_and_are_resized_with_one(tmp_path):
    write_png(tmp_path / "a.png", (64, 64))
    write_png(tmp_path / "b.png", (48, 32))
    with pytest.raises(DatasetError) as caught:
        load_image_folder(tmp_path)
    message = str(caught.value)
    assert "differ in size" in message and "a.png is 64x64" in message and "b.png is 48x32" in message
    assert "--image-size" in message and "\n" not in message
    data = load_image_folder(tmp_path, image_size=16)
    assert data.sample_shape == (3, 16, 16) and len(data) == 2
    images = data.images.numpy()
    assert (images[:, 0] == 200).all() and (images[:, 1] == 30).all()  # flat colours survive the resize


def test_equal_but_non_square_sizes_are_refused_without_an_image_size(tmp_path):
    write_png(tmp_path / "a.png", (40, 30))
    with pytest.raises(DatasetError, match="40x30.*not square"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, image_size=8).sample_shape == (3, 8, 8)


@pytest.mark.parametrize(
    "payload",
    [b"this is not a png", None],
    ids=["garbage", "truncated"],
)
def test_an_unreadable_image_is_named(tmp_path, payload):
    write_png(tmp_path / "cls" / "good.png", (16, 16))
    bad = tmp_path / "cls" / "bad.png"
    if payload is None:  # a real PNG cut in half: its header reads, its pixels do not
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(bad)
        payload = bad.read_bytes()[: len(bad.read_bytes()) // 2]
    bad.write_bytes(payload)
    with pytest.raises(DatasetError, match=r"cannot read image .*bad\.png") as caught:
        load_image_folder(tmp_path)
    assert "\n" not in str(caught.value)


def test_colour_is_decided_for_the_whole_folder(tmp_path):
    write_png(tmp_path / "grey" / "a.png", (8, 8), 90, mode="L")
    write_png(tmp_path / "grey" / "b.png", (8, 8), 200, mode="L")
    assert load_image_folder(tmp_path / "grey").sample_shape == (1, 8, 8)  # all grey: one channel
    write_png(tmp_path / "grey" / "c.png", (8, 8), (0, 255, 0))
    mixed = load_image_folder(tmp_path / "grey")
    assert mixed.sample_shape == (3, 8, 8)  # one colour image makes the folder RGB
    assert (mixed.images[0] == 90).all()  # a grey image is replicated into R, G and B
    assert load_image_folder(tmp_path / "grey", channels=1).sample_shape == (1, 8, 8)
    with pytest.raises(DatasetError, match="channels must be 1 or 3"):
        load_image_folder(tmp_path / "grey", channels=4)


def test_bad_layouts_are_one_line_errors(tmp_path):
    write_png(tmp_path / "top.png", (8, 8))
    write_png(tmp_path / "cats" / "a.png", (8, 8))
    with pytest.raises(DatasetError, match="both at its top level .*top.png.* and in subfolders .*cats/"):
        load_image_folder(tmp_path)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images found"):
        load_image_folder(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
