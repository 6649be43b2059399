"""Evaluation: FID maths, the classifier on synthetic patterns and the ``ddpm evaluate`` CLI.

Everything runs on tiny data written by the tests; no shared MNIST, no downloads.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from ddpm_core.checkpoint import save_checkpoint
from ddpm_core.cli import main
from ddpm_core.data import write_idx
from ddpm_core.evaluation.classifier import (
    ClassifierConfig,
    ClassifierTrainConfig,
    accuracy,
    classify,
    load_classifier,
    preprocess,
    random_shift,
    save_classifier,
    train_classifier,
)
from ddpm_core.evaluation.evaluate import Reference
from ddpm_core.evaluation.fid import (
    FeatureStats,
    extrapolate_fid,
    feature_stats,
    fid_from_features,
    fid_from_stats,
    frechet_distance,
    trace_sqrt_product,
)
from ddpm_core.models import MLPConfig, build_model
from ddpm_core.render import to_uint8_images
from ddpm_core.schedule import NoiseSchedule

TINY = ClassifierConfig(channels=(8, 16, 16), blocks=(1, 1, 1), num_classes=10, dropout=0.0)


# ---------------------------------------------------------------- synthetic digits


def draw_pattern(label: int) -> np.ndarray:
    """A 16x16 float pattern for one of 10 classes: bars, crosses, boxes, diagonals, dots."""
    canvas = np.zeros((16, 16), np.float32)
    if label == 0:
        canvas[7:9, :] = 1  # horizontal bar
    elif label == 1:
        canvas[:, 7:9] = 1  # vertical bar
    elif label == 2:
        canvas[7:9, :] = canvas[:, 7:9] = 1  # plus
    elif label == 3:
        canvas[:2, :] = canvas[-2:, :] = canvas[:, :2] = canvas[:, -2:] = 1  # box
    elif label == 4:
        canvas[np.arange(16), np.arange(16)] = 1  # diagonal
    elif label == 5:
        canvas[np.arange(16), 15 - np.arange(16)] = 1  # anti-diagonal
    elif label == 6:
        canvas[4:12, 4:12] = 1  # filled square
    elif label == 7:
        canvas[2:4, :] = canvas[12:14, :] = 1  # two horizontal bars
    elif label == 8:
        canvas[:, 2:4] = canvas[:, 12:14] = 1  # two vertical bars
    else:
        canvas[::5, ::5] = 1  # dots
    return canvas


def pattern_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """uint8 (N, 28, 28): each label's pattern at a random offset with a little noise."""
    rng = np.random.default_rng(seed)
    images = np.zeros((len(labels), 28, 28), np.float32)
    for index, label in enumerate(labels):
        top, left = rng.integers(3, 10, size=2)
        images[index, top : top + 16, left : left + 16] = draw_pattern(int(label))
    images = images * 230 + rng.uniform(0, 25, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def write_pattern_mnist(directory, num_classes: int, train_per_class: int, test_per_class: int) -> None:
    """Write the four MNIST IDX files of a synthetic pattern data set into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, per_class, seed, prefix in (("train", train_per_class, 1, "train"), ("test", test_per_class, 2, "t10k")):
        labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))
        write_idx(directory / f"{prefix}-images-idx3-ubyte", pattern_images(labels, seed))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
        del split


# ---------------------------------------------------------------- FID


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    assert fid_from_features(features, features) == pytest.approx(0.0, abs=1e-8)


def test_fid_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mean1, mean2 = rng.normal(size=8), rng.normal(size=8)
    var1, var2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    expected = np.sum((mean1 - mean2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mean1, np.diag(var1), mean2, np.diag(var2)) == pytest.approx(expected, rel=1e-10)


def test_trace_sqrt_product_matches_eigenvalues_for_full_covariances():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    cov1, cov2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    # S1 S2 is similar to a PSD matrix: its eigenvalues are real and non-negative
    expected = np.sqrt(np.linalg.eigvals(cov1 @ cov2).real).sum()
    assert trace_sqrt_product(cov1, cov2) == pytest.approx(expected, rel=1e-9)
    # a rotated Gaussian against itself
    assert frechet_distance(np.zeros(6), cov1, np.zeros(6), cov1) == pytest.approx(0.0, abs=1e-9)


def test_fid_is_symmetric_and_grows_with_a_mean_shift():
    rng = np.random.default_rng(1)
    first = rng.normal(size=(400, 10))
    second = rng.normal(size=(400, 10)) * 1.5
    assert fid_from_features(first, second) == pytest.approx(fid_from_features(second, first), rel=1e-9)
    distances = [fid_from_features(first, second + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[-1] > distances[0] + 10 * 4.0 * 0.9


def test_feature_stats_and_shape_errors():
    stats = feature_stats(np.arange(12.0).reshape(6, 2))
    assert stats.count == 6 and stats.mean.shape == (2,) and stats.cov.shape == (2, 2)
    with pytest.raises(ValueError):
        feature_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def correlated_gaussian(seed: int, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A random full covariance (dim, dim) and its Cholesky factor."""
    a = np.random.default_rng(seed).normal(size=(dim, dim)) / np.sqrt(dim)
    cov = a @ a.T + 0.5 * np.eye(dim)
    return cov, np.linalg.cholesky(cov)


def test_extrapolated_fid_removes_the_small_sample_bias():
    # The reference is the exact distribution, so 1000 samples from it have a true FID of 0 but
    # score about 0.1 from bias alone; shifted by a unit vector, their true FID is exactly 1.
    # Averaged over 8 draws, the extrapolations' sampling noise (about 0.08 per draw) is small.
    raw, unbiased, raw_shifted, unbiased_shifted = [], [], [], []
    for seed in range(8):
        cov, factor = correlated_gaussian(seed)
        reference = FeatureStats(np.zeros(16), cov, 10**9)
        samples = np.random.default_rng(100 + seed).normal(size=(1000, 16)) @ factor.T
        same = extrapolate_fid(samples, reference, seed=seed)
        assert same.fids[-1] == pytest.approx(fid_from_stats(feature_stats(samples), reference))  # full set last
        assert same.slope > 0 and same.fids[0] > same.fids[-1]  # smaller subsets score worse
        assert same.at(1000) == pytest.approx(same.fid_infinity + same.slope / 1000)
        shifted = extrapolate_fid(samples + np.eye(16)[0], reference, seed=seed)
        raw.append(same.fids[-1])
        unbiased.append(same.fid_infinity)
        raw_shifted.append(shifted.fids[-1])
        unbiased_shifted.append(shifted.fid_infinity)
    assert np.mean(raw) > 0.08 and abs(np.mean(unbiased)) < 0.03
    assert np.mean(raw_shifted) > 1.05 and abs(np.mean(unbiased_shifted) - 1.0) < 0.1


def test_extrapolated_fid_input_checks_and_the_reference_report():
    cov, factor = correlated_gaussian(7, dim=4)
    rng = np.random.default_rng(7)
    with pytest.raises(ValueError, match="at least 1000"):
        extrapolate_fid(rng.normal(size=(999, 4)), FeatureStats(np.zeros(4), cov, 10), seed=0)
    train, test = rng.normal(size=(1500, 4)) @ factor.T, rng.normal(size=(1500, 4)) @ factor.T
    reference = Reference(feature_stats(test), 0.99, train, fid_from_features(train, test))
    assert reference.extrapolated(train[:999]) is None  # too few samples
    assert reference.extrapolated(rng.normal(size=(1501, 4))) is None  # more than the floor's training images
    report = reference.extrapolated(rng.normal(size=(1000, 4)) @ factor.T + 0.5)
    assert report["sizes"][0] == 200 and report["sizes"][-1] == 1000 and len(report["fid_by_size"]) == 9
    assert report["fid_infinity"] == pytest.approx(4 * 0.25, abs=0.3)  # shifted by 0.5 in 4 dimensions
    assert report["fid_at_1500"] > report["fid_infinity"]
    assert report["floor_infinity"] < report["floor_at_1500"] < report["floor_by_size"][0]


def test_per_class_fid_exposes_a_collapsed_class():
    # three classes of 4-d Gaussian features with different means; the "generator" draws class 1
    # as a single shape (its features barely vary), the others from the true distribution
    rng = np.random.default_rng(11)
    means = np.array([[0.0, 0, 0, 0], [3.0, 0, 0, 0], [0.0, 3, 0, 0]])

    def draw(label: int, count: int) -> np.ndarray:
        return means[label] + rng.normal(size=(count, 4))

    test = np.concatenate([draw(label, 400) for label in range(3)])
    train_labels = np.repeat(np.arange(3), 300)
    train = np.concatenate([draw(label, 300) for label in range(3)])
    class_stats = [feature_stats(test[label * 400 : (label + 1) * 400]) for label in range(3)]
    reference = Reference(feature_stats(test), 0.99, train, 0.0, class_stats, train_labels)
    labels = np.repeat(np.arange(3), 150)
    generated = np.concatenate([draw(0, 150), means[1] + 0.01 * rng.normal(size=(150, 4)), draw(2, 150)])
    report = reference.per_class_fid(generated, labels)
    assert set(report) == {"0", "1", "2"}
    for label in ("0", "2"):
        assert report[label]["fid"] < 0.3 and report[label]["floor_same_n"] < 0.3
    assert report["1"]["fid"] > 3.0 > 10 * report["1"]["floor_same_n"]  # 4 dimensions of lost variance
    assert reference.per_class_fid(generated[::2], labels[::2]) is None  # 75 per class: too few
    assert Reference(feature_stats(test), 0.99, train, 0.0).per_class_fid(generated, labels) is None


# ---------------------------------------------------------------- classifier


def test_preprocessing_is_shared_by_real_and_generated_images():
    samples = torch.tensor([-1.0, 0.0, 1.0, 2.0]).repeat(196).reshape(1, 1, 28, 28)
    images = to_uint8_images(samples)[..., 0]
    assert images.dtype == np.uint8 and images.shape == (1, 28, 28)
    assert set(np.unique(images)) <= {0, 128, 255}
    back = preprocess(images)
    assert back.shape == (1, 1, 28, 28) and back.min() == -1.0 and back.max() == 1.0
    with pytest.raises(ValueError):
        preprocess(np.zeros((2, 32, 32), np.uint8))


def test_random_shift_moves_content_and_keeps_shape():
    images = -torch.ones(4, 1, 28, 28)
    images[:, :, 14, 14] = 1.0
    shifted = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    assert torch.all((shifted == 1.0).sum(dim=(1, 2, 3)) == 1)
    assert torch.equal(random_shift(images, 0, torch.Generator()), images)


def test_classifier_learns_synthetic_patterns_and_round_trips(tmp_path):
    torch.set_num_threads(1)
    train_labels = np.repeat(np.arange(3), 100)
    test_labels = np.repeat(np.arange(3), 30)
    train_images, test_images = pattern_images(train_labels, 0), pattern_images(test_labels, 1)
    config = ClassifierConfig(channels=(8, 16, 16), blocks=(1, 1, 1), num_classes=3, dropout=0.0)
    model = train_classifier(
        train_images, train_labels, config, ClassifierTrainConfig(epochs=3, batch_size=32, learning_rate=1e-2)
    )
    test_accuracy = accuracy(model, test_images, test_labels)
    assert test_accuracy >= 0.9
    path = save_classifier(tmp_path / "clf.safetensors", model, {"test_accuracy": test_accuracy})
    loaded = load_classifier(path)
    assert loaded.info["test_accuracy"] == test_accuracy and loaded.model.config == config
    labels, features = classify(loaded.model, test_images)
    assert features.shape == (90, 16) and features.dtype == np.float64
    assert np.array_equal(labels, classify(model, test_images)[0])


def test_classifier_training_is_deterministic():
    torch.set_num_threads(1)
    labels = np.repeat(np.arange(3), 20)
    images = pattern_images(labels, 0)
    config = ClassifierConfig(channels=(4, 8, 8), num_classes=3)  # default blocks (1, 1, 2), dropout
    settings = ClassifierTrainConfig(epochs=1, batch_size=16, seed=5)
    first, second = (train_classifier(images, labels, config, settings) for _ in range(2))
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_committed_classifier_is_small_and_accurate():
    from ddpm_core.cli.evaluate import DEFAULT_CLASSIFIER

    if not DEFAULT_CLASSIFIER.is_file():
        pytest.skip("no committed classifier")
    assert DEFAULT_CLASSIFIER.stat().st_size < 1_000_000
    loaded = load_classifier(DEFAULT_CLASSIFIER)
    assert loaded.info["test_accuracy"] >= 0.99 and loaded.info["test_images"] == 10_000
    assert loaded.model.config.num_classes == 10


def test_load_classifier_rejects_other_files(tmp_path):
    from ddpm_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        load_classifier(tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not an MNIST classifier"):
        load_classifier(other)


# ---------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A synthetic 10-class MNIST, a diffusion checkpoint trained for 4 steps (the evaluation needs a
    checkpoint, not a good one) and a tiny classifier."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "mnist"
    write_pattern_mnist(data, num_classes=10, train_per_class=30, test_per_class=10)
    code = main(
        [
            "train", "--dataset", "mnist", "--data-dir", str(data), "--out", str(root / "run"),
            "--max-steps", "4", "--batch-size", "16", "--base-channels", "8", "--channel-mult", "1,2",
            "--attention-resolutions", "", "--num-train-timesteps", "50", "--no-progress", "--device", "cpu",
        ]
    )  # fmt: skip
    assert code == 0
    from ddpm_core.data import load_mnist

    images, labels = load_mnist(data, "train")
    classifier = train_classifier(
        images, labels, TINY, ClassifierTrainConfig(epochs=2, batch_size=32, learning_rate=1e-2)
    )
    save_classifier(root / "clf.safetensors", classifier, {"note": "test"})
    mlp = build_model("mlp", MLPConfig(hidden_dim=16, num_layers=1))
    save_checkpoint(
        root / "checkerboard.safetensors", mlp, NoiseSchedule.linear(50),
        class_names=[], sample_shape=(2,), dataset="checkerboard",
    )  # fmt: skip
    return root


def evaluate_args(workspace, *extra: str) -> list[str]:
    return [
        "evaluate", "--checkpoint", str(workspace / "run" / "model.safetensors"),
        "--data-dir", str(workspace / "mnist"),
        "--classifier", str(workspace / "clf.safetensors"), "--min-classifier-accuracy", "0",
        "--sampler", "ddim", "--steps", "5", "--per-class", "2", "--batch-size", "8", *extra,
    ]  # fmt: skip


def test_evaluate_cli_prints_metrics(workspace, capsys):
    assert main(evaluate_args(workspace, "--guidance", "1.5", "--seed", "3")) == 0
    result = json.loads(capsys.readouterr().out)
    for key in (
        "accuracy", "per_class_accuracy", "fid", "fid_train_vs_test", "fid_train_vs_test_same_n",
        "classifier_test_accuracy", "sampling_seconds", "settings", "weights_sha256", "predicted_class_counts",
    ):  # fmt: skip
        assert key in result, key
    assert 0.0 <= result["accuracy"] <= 1.0
    assert set(result["per_class_accuracy"]) == {str(digit) for digit in range(10)}
    assert all(0.0 <= value <= 1.0 for value in result["per_class_accuracy"].values())
    assert result["fid"] >= 0 and result["fid_train_vs_test"] >= 0 and result["fid_train_vs_test_same_n"] >= 0
    assert 0.0 <= result["classifier_test_accuracy"] <= 1.0
    assert result["num_samples"] == 20 and sum(result["predicted_class_counts"]) == 20
    assert result["fid_reference_images"] == 100 and result["fid_floor_train_images"] == 300
    assert result["fid_extrapolated"] is None  # 20 samples: too few to fit the 1/N bias
    assert result["per_class_fid"] is None  # 2 per class: too few for a class's covariance
    settings = result["settings"]
    assert settings["sampler"] == "ddim" and settings["steps"] == 5 and settings["guidance"] == 1.5
    assert settings["seed"] == 3 and settings["per_class"] == 2
    assert len(result["weights_sha256"]) == 64


def test_evaluate_guidance_sweep_prints_a_list(workspace, capsys):
    assert main(evaluate_args(workspace, "--guidance-sweep", "0,2", "--per-class", "1")) == 0
    results = json.loads(capsys.readouterr().out)
    assert [item["settings"]["guidance"] for item in results] == [0.0, 2.0]
    assert results[0]["fid_train_vs_test"] == results[1]["fid_train_vs_test"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--checkpoint": "missing.safetensors"}, "does not exist"),
        ({"--data-dir": "missing-dir"}, "missing-dir"),
        ({"--per-class": "0"}, "--per-class"),
        ({"--classifier": "missing.safetensors"}, "does not exist"),
        ({"--min-classifier-accuracy": "1.01"}, "below --min-classifier-accuracy"),
    ],
)
def test_evaluate_rejects_bad_inputs(workspace, capsys, change, message):
    args = evaluate_args(workspace)
    for flag, value in change.items():
        paths = ("--checkpoint", "--classifier", "--data-dir")
        args[args.index(flag) + 1] = str(workspace / value) if flag in paths else value
    assert main(args) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()  # INFO logs may precede the error when logging goes to stderr
    assert lines[-1].startswith("ddpm: error:") and message in lines[-1], captured.err
    assert sum(line.startswith("ddpm:") for line in lines) == 1 and "Traceback" not in captured.err


def test_evaluate_sweep_writes_csv_table_and_plot(workspace, capsys, tmp_path):
    """Every sampler x steps of the sweep drawn with the same seeds, measured and timed side by side."""
    sweep = "ddim:2,3 uni_pc:2 dpmpp_2m:3 ddim@linspace:2 ddpm"
    files = {"--csv": tmp_path / "sweep.csv", "--table": tmp_path / "sweep.md", "--plot": tmp_path / "sweep.png"}
    args = evaluate_args(workspace, "--per-class", "1", "--sweep", sweep, "--no-progress")
    args += [part for flag, path in files.items() for part in (flag, str(path))]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["sampler"], row["steps"], row["spacing"]) for row in rows] == [
        ("ddim", 2, "trailing"), ("ddim", 3, "trailing"), ("uni_pc", 2, "trailing"), ("dpmpp_2m", 3, "trailing"),
        ("ddim", 2, "linspace"), ("ddpm", 50, "trailing"),
    ]  # fmt: skip
    assert all(row["fid"] >= 0 and 0 <= row["accuracy"] <= 1 and row["seconds_per_sample"] > 0 for row in rows)
    assert all(row["samples"] == 10 and row["fid_floor"] is not None for row in rows)
    with files["--csv"].open() as handle:
        table = list(csv.DictReader(handle))
    assert [(row["sampler"], int(row["steps"])) for row in table] == [(r["sampler"], r["steps"]) for r in rows]
    assert float(table[0]["fid"]) == pytest.approx(rows[0]["fid"])
    markdown = files["--table"].read_text().splitlines()
    assert markdown[0].startswith("| sampler | steps | accuracy | FID") and len(markdown) == 2 + len(rows)
    assert "| ddim (linspace) | 2 |" in files["--table"].read_text()
    assert files["--plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_measures_a_point_model_on_the_board(workspace, capsys):
    """A 2D model needs no data or classifier: the fraction of its points on the black squares."""
    checkpoint = str(workspace / "checkerboard.safetensors")
    args = ["evaluate", "--checkpoint", checkpoint, "--points", "300", "--sweep", "ddim:3 uni_pc:3", "--no-progress"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["sampler"], row["steps"]) for row in rows] == [("ddim", 3), ("uni_pc", 3)]
    assert all(0 <= row["on_squares"] <= 1 and row["fid"] is None and row["samples"] == 300 for row in rows)


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ("euler:5", "unknown sampler 'euler'"),
        ("ddpm:10", "runs all training steps"),
        ("ddim:five", "whole numbers"),
        ("ddim@leading:5", "unknown spacing"),
    ],
)
def test_a_bad_sweep_is_one_line(workspace, capsys, sweep, message):
    assert main(evaluate_args(workspace, "--sweep", sweep)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ddpm: error: --sweep") and message in err[-1]
