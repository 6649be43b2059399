"""Telling a safetensors checkpoint from a pickle by its header, whatever the header length's low byte.

The first byte of a safetensors file is the low byte of its header length; 0x80 (pickle's PROTO
opcode) used to get a good checkpoint refused as a pickle, about one in 32 of those safetensors
writes (it pads headers to 8 bytes).
"""

import json
import pickle
import struct

import pytest
import torch

from ddpm_core import CheckpointError, NoiseSchedule, UNet, UNetConfig, load_checkpoint, save_checkpoint
from ddpm_core.checkpoint_header import read_checkpoint_info, read_raw_header

CONFIG = UNetConfig(
    image_size=8, base_channels=8, channel_mult=(1,), attention_resolutions=(), num_classes=2, norm_groups=4
)
MUST_PASS = (0x80, 0x00, 0x50, 0x7B, 0xFF)  # PROTO, a zero byte, 'P' (as in PK), '{', the top


def save(path, dataset="d", model=None):
    """Save ``model`` (default: a fresh U-Net of CONFIG, seed 0) as a checkpoint of ``dataset``."""
    if model is None:
        torch.manual_seed(0)
        model = UNet(CONFIG)
    return save_checkpoint(
        path, model, NoiseSchedule.linear(10), class_names=["a", "b"], sample_shape=(1, 8, 8), dataset=dataset
    )


def header_length(path):
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_checkpoints_saved_with_every_header_length_residue_load(tmp_path):
    """Real saves, the dataset name padded until the header length's low byte takes every value it can."""
    torch.manual_seed(0)
    model = UNet(CONFIG)  # one model, saved under ever longer dataset names
    found = {}
    for extra in range(264):
        path = save(tmp_path / "probe.safetensors", dataset="d" + "x" * extra, model=model)
        found.setdefault(header_length(path) % 256, extra)
    assert {0x80, 0x00, 0x50} <= set(found)  # safetensors pads headers to 8 bytes: 32 residues are reachable
    assert len(found) >= 32
    for residue, extra in sorted(found.items()):
        path = save(tmp_path / f"m{residue:02x}.safetensors", dataset="d" + "x" * extra, model=model)
        assert path.read_bytes()[0] == residue
        assert read_raw_header(path)["__metadata__"]["dataset"] == "d" + "x" * extra
        assert read_checkpoint_info(path)["class_names"] == ["a", "b"]
        loaded = load_checkpoint(path)
        assert loaded.class_names == ["a", "b"] and loaded.dataset == "d" + "x" * extra


def test_every_low_byte_of_a_hand_padded_header_loads(tmp_path):
    """All 256 residues: a real checkpoint's header re-written with trailing spaces (valid JSON)."""
    data = save(tmp_path / "source.safetensors").read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    compact = json.dumps(json.loads(data[8 : 8 + size]), separators=(",", ":")).encode()
    weights = data[8 + size :]
    expected = load_checkpoint(tmp_path / "source.safetensors").model.state_dict()
    for residue in range(256):
        length = len(compact) + (residue - len(compact)) % 256
        path = tmp_path / "padded.safetensors"
        path.write_bytes(struct.pack("<Q", length) + compact.ljust(length) + weights)
        assert path.read_bytes()[0] == residue
        assert read_checkpoint_info(path)["parameter_count"] > 0, residue
        if residue in MUST_PASS or residue % 16 == 0:  # loading all 256 adds nothing the header checks miss
            state = load_checkpoint(path).model.state_dict()
            torch.testing.assert_close(state["input_conv.weight"], expected["input_conv.weight"], rtol=0, atol=0)


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda path: torch.save({"w": torch.zeros(3)}, path), id="torch.save-zip"),
        pytest.param(
            lambda path: torch.save({"w": torch.zeros(3)}, path, _use_new_zipfile_serialization=False),
            id="torch.save-legacy-pickle",
        ),
        *[
            pytest.param(
                lambda path, protocol=protocol: path.write_bytes(pickle.dumps({"w": [0.0] * 3}, protocol=protocol)),
                id=f"pickle-protocol-{protocol}",
            )
            for protocol in (2, 3, 4, 5)
        ],
        pytest.param(lambda path: path.write_bytes(b"PK\x03\x04" + b"\0" * 60), id="bare-zip"),
    ],
)
def test_pickles_and_zips_are_refused_as_pickles(tmp_path, write):
    path = tmp_path / "model.safetensors"
    write(path)
    for reader in (read_raw_header, read_checkpoint_info, load_checkpoint):
        with pytest.raises(CheckpointError, match="is a pickled torch file"):
            reader(path)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x80\x01" + b"\0" * 40, "bad header length"),  # 0x80 without a pickle protocol byte
        (struct.pack("<Q", 0x80) + b"[" + b" " * 0x7F, "header is not a JSON object"),
        (struct.pack("<Q", 0x80) + b"{" + b"!" * 0x7F, "header is not JSON"),
        (b"\x80\x02", "pickled"),
        (b"\x10\x00", "too short"),
    ],
)
def test_broken_files_get_the_right_reason(tmp_path, payload, message):
    path = tmp_path / "m.safetensors"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=message):
        read_raw_header(path)
