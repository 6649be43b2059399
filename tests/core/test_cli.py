"""The ``ddpm`` command on data the tests write: end to end in subprocesses (train, sample, export
a real run: marked e2e), and its one-line errors and subcommand discovery in-process (fast)."""

import io
import json
import os
import subprocess
import sys
import types
from importlib.metadata import EntryPoint

import numpy as np
import pytest
import torch

import ddpm_core.cli as cli
from ddpm_core import NoiseSchedule, UNet, UNetConfig, save_checkpoint
from ddpm_core.errors import CheckpointError

TINY_UNET = [
    "--base-channels",
    "8",
    "--channel-mult",
    "1,2",
    "--attention-resolutions",
    "",
    "--num-train-timesteps",
    "20",
]


def ddpm(*args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "ddpm_core", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ddpm {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from tests.core.conftest import write_mnist_like

    root = tmp_path_factory.mktemp("cli")
    data = write_mnist_like(root / "mnist", [0, 1, 7], copies=4)
    ddpm(
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        data,
        "--out",
        root / "run",
        "--max-steps",
        12,
        "--batch-size",
        8,
        "--log-every",
        4,
        "--checkpoint-every",
        6,
        "--sample-every",
        12,
        "--no-progress",
        *TINY_UNET,
    )
    return root


@pytest.mark.e2e  # the ddpm command in subprocesses, on a run trained by one
def test_train_writes_checkpoint_log_and_samples(trained_run):
    run = trained_run / "run"
    assert (run / "model.safetensors").is_file() and (run / "train_state.json").is_file()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [4, 8, 12]
    assert all(entry["loss"] > 0 and entry["steps_per_s"] > 0 for entry in log)
    assert (run / "samples" / "step_0000012.png").is_file()


@pytest.mark.e2e  # the ddpm command in subprocesses, on a run trained by one
def test_sample_all_classes(trained_run):
    out = trained_run / "all.npy"
    ddpm(
        "sample",
        "--checkpoint",
        trained_run / "run" / "model.safetensors",
        "--all-classes",
        "--n",
        2,
        "--sampler",
        "ddim",
        "--steps",
        3,
        "--npy",
        out,
        "--png",
        trained_run / "all.png",
    )
    assert np.load(out).shape == (20, 1, 28, 28)
    from PIL import Image

    width, height = Image.open(trained_run / "all.png").size
    assert height > 4 * width  # ten rows of two


@pytest.mark.e2e  # the ddpm command in subprocesses, on a run trained by one
def test_sample_writes_png_gif_and_npy(trained_run):
    out = trained_run / "out"
    ddpm(
        "sample",
        "--checkpoint",
        trained_run / "run" / "model.safetensors",
        "--digit",
        7,
        "--n",
        3,
        "--sampler",
        "ddim",
        "--steps",
        5,
        "--guidance",
        1.5,
        "--seed",
        4,
        "--png",
        out / "a.png",
        "--gif",
        out / "a.gif",
        "--npy",
        out / "a.npy",
    )
    samples = np.load(out / "a.npy")
    assert samples.shape == (3, 1, 28, 28) and samples.dtype == np.float32
    assert samples.min() >= -1 and samples.max() <= 1
    from PIL import Image

    assert Image.open(out / "a.gif").n_frames >= 2
    assert Image.open(out / "a.png").size[0] > 28
    again = trained_run / "again.npy"
    ddpm(
        "sample",
        "--checkpoint",
        trained_run / "run" / "model.safetensors",
        "--digit",
        7,
        "--n",
        3,
        "--sampler",
        "ddim",
        "--steps",
        5,
        "--guidance",
        1.5,
        "--seed",
        4,
        "--npy",
        again,
    )
    np.testing.assert_array_equal(np.load(again), samples)


def tiny_checkpoint(path, num_classes):
    """An untrained 8x8 U-Net checkpoint: the sample errors need a model, not a trained one."""
    classes = [str(digit) for digit in range(num_classes)]
    config = UNetConfig(
        image_size=8, base_channels=8, channel_mult=(1,), attention_resolutions=(), num_classes=num_classes,
        norm_groups=4,
    )  # fmt: skip
    save_checkpoint(
        path, UNet(config), NoiseSchedule.linear(10), class_names=classes, sample_shape=(1, 8, 8), dataset="test"
    )
    return path


def in_process(capsys, *args):
    """``ddpm ARGS`` in this process: its exit status and the lines it wrote to stderr."""
    capsys.readouterr()
    code = cli.main([str(arg) for arg in args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "{missing}", "--png", "x.png"], "does not exist"),
        (["--checkpoint", "{run}", "--digit", "10", "--png", "x.png"], "out of range"),
        (["--checkpoint", "{run}", "--sampler", "ddim", "--steps", "0", "--png", "x.png"], "num_inference_steps"),
        (["--checkpoint", "{run}"], "nothing to write"),
        (["--checkpoint", "{pickle}", "--png", "x.png"], "pickle"),
        (["--checkpoint", "{uncond}", "--digit", "1", "--png", "x.png"], "unconditional"),
        (["--checkpoint", "{run}", "--n", "4", "--seed", str(2**63 - 1), "--png", "x.png"], "largest allowed seed"),
    ],
)
def test_sample_errors_are_one_clear_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)  # x.png, were it ever written
    pickle_path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, pickle_path)
    paths = {
        "missing": tmp_path / "nope.safetensors",
        "run": tiny_checkpoint(tmp_path / "digits.safetensors", num_classes=10),
        "pickle": pickle_path,
        "uncond": tiny_checkpoint(tmp_path / "uncond.safetensors", num_classes=0),
    }
    code, lines = in_process(capsys, "sample", *[a.format(**paths) for a in args])
    assert code != 0
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in "\n".join(lines), lines
    assert not (tmp_path / "x.png").exists()


def test_bad_options_fail_cleanly(tmp_path, capsys):
    code, lines = in_process(capsys, "train", "--dataset", "imagenet", "--out", tmp_path)
    assert code != 0 and "unknown dataset" in lines[-1] and "Traceback" not in "\n".join(lines)
    with pytest.raises(SystemExit) as exited:  # argparse's own error: exit status 2
        cli.main(["sample", "--checkpoint", "x", "--n", "many"])
    assert exited.value.code == 2 and "invalid int value" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (broken / name).write_bytes(b"garbage")
    code, lines = in_process(capsys, "train", "--dataset", "mnist", "--data-dir", broken, "--out", tmp_path / "r")
    assert code != 0 and "not an IDX file" in lines[-1] and "Traceback" not in "\n".join(lines)
    assert not (tmp_path / "r").exists()


@pytest.mark.e2e  # real processes: what a user of the command sees
def test_the_command_fails_in_one_line_with_status_2(tmp_path):
    result = ddpm("sample", "--checkpoint", tmp_path / "nope.safetensors", "--png", tmp_path / "x.png", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddpm: error: ") and "does not exist" in lines[0], lines
    result = ddpm("sample", "--checkpoint", "x", "--n", "many", check=False)
    assert result.returncode == 2 and "invalid int value" in result.stderr and "Traceback" not in result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (broken / name).write_bytes(b"garbage")
    result = ddpm("train", "--dataset", "mnist", "--data-dir", broken, "--out", tmp_path / "r", check=False)
    assert result.returncode == 2 and "not an IDX file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.e2e  # the ddpm command in subprocesses, on a run trained by one
def test_export_sets_the_default_guidance(trained_run):
    from ddpm_core import load_checkpoint

    source = trained_run / "run" / "model.safetensors"
    target = trained_run / "served.safetensors"
    ddpm("export", "--checkpoint", source, "--out", target, "--default-guidance", 1.5)
    exported, original = load_checkpoint(target), load_checkpoint(source)
    assert exported.training["default_guidance"] == 1.5
    assert exported.training["steps"] == original.training["steps"]
    for name, tensor in original.model.state_dict().items():
        torch.testing.assert_close(exported.model.state_dict()[name], tensor, rtol=0, atol=0)
    result = ddpm("export", "--checkpoint", source, "--out", source, check=False)
    assert result.returncode == 2 and "must differ" in result.stderr


# ---------------------------------------------------------------- subcommands from entry points


def make_plugin(run):
    """A module with add_parser() and run(), as a ``ddpm.commands`` entry point names."""
    module = types.ModuleType("fake_ddpm_plugin")

    def add_parser(subparsers):
        parser = subparsers.add_parser("hello", help="say hello")
        parser.add_argument("--who", default="world")

    module.add_parser = add_parser
    module.run = run
    return module


@pytest.fixture
def plugin_entry_points(monkeypatch):
    """Replace the entry-point lookup: ``install(name=module_path, ...)`` lists those entry points."""

    def install(**commands):
        found = [EntryPoint(name, value, cli.ENTRY_POINT_GROUP) for name, value in commands.items()]
        monkeypatch.setattr(cli, "entry_points", lambda group: [e for e in found if e.group == group])

    return install


def test_a_discovered_subcommand_runs(monkeypatch, plugin_entry_points, capsys):
    def run(args):
        print(f"hello {args.who}")
        return 0

    monkeypatch.setitem(sys.modules, "fake_ddpm_plugin", make_plugin(run))
    plugin_entry_points(hello="fake_ddpm_plugin")
    assert list(cli.discover_commands()) == [*cli.BUILTIN_COMMANDS, "hello"]
    assert cli.main(["hello", "--who", "you"]) == 0
    assert capsys.readouterr().out == "hello you\n"


def test_errors_of_a_discovered_subcommand_are_one_line(monkeypatch, plugin_entry_points, capsys):
    def run(args):
        raise CheckpointError(f"no model for {args.who}")

    monkeypatch.setitem(sys.modules, "fake_ddpm_plugin", make_plugin(run))
    plugin_entry_points(hello="fake_ddpm_plugin")
    assert cli.main(["hello", "--who", "you"]) == 2
    assert capsys.readouterr().err == "ddpm: error: no model for you\n"


def test_a_builtin_subcommand_cannot_be_replaced(monkeypatch, plugin_entry_points):
    plugin_entry_points(sample="fake_ddpm_plugin")
    assert cli.discover_commands()["sample"] == "ddpm_core.cli.sample"


def test_a_subcommand_missing_a_third_party_package_is_unavailable(tmp_path, monkeypatch, plugin_entry_points, capsys):
    (tmp_path / "needs_missing_dep.py").write_text("import surely_not_installed_package\n")
    (tmp_path / "stale_pkg").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin_entry_points(hello="needs_missing_dep", gone="stale_pkg.removed_module")
    assert cli.main(["hello"]) == 2
    assert "'ddpm hello' is unavailable" in capsys.readouterr().err
    assert cli.main(["gone"]) == 2
    assert "'ddpm gone' is unavailable" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())  # argparse wraps the help column
    assert "hello" in listing and "(unavailable: No module named 'surely_not_installed_package')" in listing


def test_a_missing_module_of_the_subcommand_own_package_is_a_bug(tmp_path, monkeypatch, plugin_entry_points):
    package = tmp_path / "buggy_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "command.py").write_text("import buggy_plugin.helpers_that_were_renamed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin_entry_points(hello="buggy_plugin.command")
    with pytest.raises(ModuleNotFoundError, match="helpers_that_were_renamed"):
        cli.main(["hello"])


def test_only_the_chosen_subcommand_is_imported(tmp_path):
    """A torch-free subcommand (like 'ddpm serve') must not pull in torch through ddpm_core.cli."""
    (tmp_path / "light_plugin.py").write_text(
        "import sys\n"
        "def add_parser(subparsers):\n"
        "    subparsers.add_parser('light')\n"
        "def run(args):\n"
        "    print('torch' in sys.modules, 'ddpm_core.cli.train' in sys.modules)\n"
    )
    script = (
        "import sys\n"
        "from importlib.metadata import EntryPoint\n"
        "import ddpm_core.cli as cli\n"
        "cli.entry_points = lambda group: [EntryPoint('light', 'light_plugin', group)]\n"
        "sys.exit(cli.main(['light']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_sample_shows_a_progress_bar_on_a_terminal_only(tmp_path, monkeypatch):
    """The bar counts the sampler's steps on a terminal; --no-progress and a pipe show none."""
    checkpoint = tiny_checkpoint(tmp_path / "digits.safetensors", num_classes=10)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def stderr_of(stream, *flags):
        monkeypatch.setattr("sys.stderr", stream)
        args = ["sample", "--checkpoint", checkpoint, "--sampler", "ddim", "--steps", "7", "--n", "2"]
        assert cli.main([str(arg) for arg in [*args, "--npy", tmp_path / "x.npy", *flags]]) == 0
        return stream.getvalue()

    assert "7/7" in stderr_of(Terminal())
    assert "7/7" not in stderr_of(Terminal(), "--no-progress")
    assert "7/7" not in stderr_of(io.StringIO())  # not a terminal
