"""The checks of a job's samples (worker/check.py): which models each judges (a classifier paired to
the model's data and classes, the checkerboard's measure for points), how the classifier reads
samples (as the PNG shows them), and the bounded redraw rounds with their reported seeds; the
engine draws one seed per sample; the check lands in a live job's hash only; older records parse."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import redis
import torch
from pydantic import ValidationError

from contract.layout import CHECK_FIELD, DigitCheck, JobRecord, Keys, new_job_fields
from contract.settings import Settings
from contract.spec import MAX_REDRAW_ROUNDS, JobSpec
from ddpm_core.checkpoint import load_checkpoint
from ddpm_core.data.fingerprint import data_fingerprint
from ddpm_core.evaluation.classifier import (
    ClassifierConfig,
    ClassifierTrainConfig,
    classify,
    save_classifier,
    train_classifier,
)
from ddpm_core.evaluation.pairing import paired_classifier_path
from ddpm_core.render import to_uint8_images
from serve.redis_server import EmbeddedRedis
from worker import check as check_module
from worker.check import CHECKERBOARD, Classifier, DigitChecker, check_points, check_samples
from worker.engine import Engine, EngineRequest
from worker.store import JobStore

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "checkpoints" / "mnist.safetensors"
CLASSIFIER = REPO / "checkpoints" / "mnist_classifier.safetensors"
DIGITS = [str(digit) for digit in range(10)]


def model(dataset: str, shape: tuple[int, ...], class_names: list[str], path: Path | None = None, **training):
    """What the checker reads of a loaded checkpoint."""
    return SimpleNamespace(dataset=dataset, sample_shape=shape, class_names=class_names, path=path, training=training)


MNIST = model("mnist", (1, 28, 28), DIGITS)


def spec_of(**overrides) -> JobSpec:
    fields = dict(model="mnist", weights_sha256="ab" * 32, sampler="ddim", steps=10, guidance=0.5, seed=100)
    fields.update(digit=3, n=4)
    fields.update(overrides)
    return JobSpec(**fields)


# ------------------------------------------------------------------ which models are checked


def test_only_models_a_check_can_judge_are_checked(tmp_path: Path) -> None:
    assert DigitChecker(None).for_model(MNIST) == "the per-class check is off (DDPM_CLASSIFIER is empty)"
    checker = DigitChecker(CLASSIFIER)
    board = model("checkerboard", (2,), [])
    assert checker.for_model(board) is CHECKERBOARD and DigitChecker(None).for_model(board) is CHECKERBOARD
    assert checker.for_model(model("moons", (2,), [])) == "no measure for points of dataset 'moons'"
    faces = model("folder:faces", (3, 28, 28), ["a", "b"])
    assert checker.for_model(faces) == "no classifier for dataset 'folder:faces'"
    rgb = model("mnist", (3, 28, 28), DIGITS)
    assert checker.for_model(rgb) == "no classifier for samples of shape (3, 28, 28)"
    five = model("mnist", (1, 28, 28), DIGITS[:5])
    assert checker.for_model(five) == "no classifier for 5 classes (the classifier has 10)"
    named = model("mnist", (1, 28, 28), [f"digit {d}" for d in DIGITS])
    assert checker.for_model(named) == "the classifier mnist_classifier was trained on other classes than the model's"
    classifier = checker.for_model(MNIST)
    assert isinstance(classifier, Classifier)
    assert (classifier.name, classifier.test_accuracy) == ("mnist_classifier", 0.9943)  # from the file's metadata
    assert classifier.class_names == tuple(DIGITS)
    unconditional = model("mnist", (1, 28, 28), [])
    assert checker.for_model(unconditional) is classifier  # labels, no matches
    beside = model("mnist", (1, 28, 28), DIGITS, path=REPO / "checkpoints" / "mnist.safetensors")
    assert checker.for_model(beside) is classifier  # mnist_classifier is also the shipped model's own

    missing = DigitChecker(tmp_path / "nowhere.safetensors")
    assert missing.for_model(MNIST) == "no classifier file nowhere.safetensors"  # no server path
    assert missing.for_model(model("folder:faces", (3, 8, 8), ["a"])) == "no classifier for dataset 'folder:faces'"
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a classifier")
    assert DigitChecker(broken).for_model(MNIST) == "the classifier broken.safetensors cannot be loaded"


def test_the_classifier_loads_once_per_process_and_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = check_module.load_classifier
    monkeypatch.setattr(check_module, "load_classifier", lambda path: calls.append(path) or real(path))
    checker = DigitChecker(CLASSIFIER)
    assert calls == []  # nothing loads before a job needs it
    checker.for_model(model("checkerboard", (2,), []))
    checker.for_model(model("mnist", (3, 28, 28), DIGITS))
    assert calls == []  # nor for a model it cannot judge
    first = checker.for_model(MNIST)
    assert checker.for_model(MNIST) is first and calls == [CLASSIFIER]


def test_the_setting_names_the_classifier() -> None:
    assert Settings(model_dir=Path("/m")).classifier_path == Path("/m/mnist_classifier.safetensors")
    assert Settings(classifier="/c/other.safetensors").classifier_path == Path("/c/other.safetensors")
    assert Settings(classifier="").classifier_path is None


# ------------------------------------------------------------------ redraw rounds (a stub classifier)


class StubClassifier:
    """Reads the digit a constant sample encodes: value = digit / 4.5 - 1."""

    name, sha256, test_accuracy = "stub", "0" * 64, None
    class_names = tuple(DIGITS)

    def read(self, samples: torch.Tensor) -> tuple[list[int], list[float]]:
        return [round((float(sample.flatten()[0]) + 1) * 4.5) for sample in samples], [0.5] * len(samples)


def drawn(digits: list[int]) -> torch.Tensor:
    return torch.stack([torch.full((1, 28, 28), digit / 4.5 - 1) for digit in digits])


def test_mismatches_are_redrawn_in_bounded_rounds_with_new_seeds() -> None:
    spec = spec_of(digit=3, n=4, seed=100, redraw_rounds=2)
    by_seed = {105: 3, 107: 1, 111: 9}  # round r draws sample i with seed + n * r + i
    calls = []

    def redraw(indices: list[int], seeds: list[int]) -> torch.Tensor:
        calls.append((indices, seeds))
        return drawn([by_seed[seed] for seed in seeds])

    samples, check = check_samples(StubClassifier(), spec, drawn([3, 5, 3, 7]), redraw)
    assert calls == [([1, 3], [105, 107]), ([3], [111])]  # round 2 only redraws what round 1 left wrong
    assert [sample.digit for sample in check.samples] == [3, 3, 3, 9]
    assert StubClassifier().read(samples)[0] == [3, 3, 3, 9]  # the final samples are the redrawn ones
    assert [sample.seed for sample in check.samples] == [100, 105, 102, 111]
    assert [sample.redrawn for sample in check.samples] == [0, 1, 0, 2]
    assert [sample.matches for sample in check.samples] == [True, True, True, False]
    assert (check.matches, check.first_draw_matches, check.rounds_run, check.redrawn) == (3, 2, 2, 2)
    assert check.asked == 3 and check.redraw_rounds == MAX_REDRAW_ROUNDS and check.skipped is None
    assert [sample.index for sample in check.samples] == [0, 1, 2, 3]


def test_redrawing_stops_after_the_last_round_and_when_all_match() -> None:
    spec = spec_of(digit=2, n=3, seed=7, redraw_rounds=2)
    calls = []

    def never_right(indices: list[int], seeds: list[int]) -> torch.Tensor:
        calls.append(seeds)
        return drawn([8] * len(seeds))

    _, check = check_samples(StubClassifier(), spec, drawn([8, 8, 8]), never_right)
    assert calls == [[10, 11, 12], [13, 14, 15]]  # exactly MAX_REDRAW_ROUNDS rounds, then the samples stay
    assert [sample.seed for sample in check.samples] == [13, 14, 15]
    assert check.matches == 0 and check.rounds_run == 2 and check.redrawn == 3

    _, check = check_samples(StubClassifier(), spec, drawn([2, 2, 2]), never_right)
    assert len(calls) == 2 and check.rounds_run == 0 and check.matches == 3  # nothing to redraw

    _, check = check_samples(StubClassifier(), spec_of(digit=2, n=3), drawn([8, 2, 8]), never_right)
    assert len(calls) == 2 and check.redraw_rounds == 0 and check.matches == 1  # not asked: mismatches stay

    _, check = check_samples(StubClassifier(), spec_of(digit=None, n=3, redraw_rounds=2), drawn([8, 2, 1]), never_right)
    assert len(calls) == 2  # unconditional: labels only
    assert check.asked is None and check.matches is None and check.first_draw_matches is None
    assert [(sample.digit, sample.matches) for sample in check.samples] == [(8, None), (2, None), (1, None)]


def test_sample_seeds_never_wrap() -> None:
    """A spec whose samples' seeds would pass 2**63 - 1 is refused (they wrapped to 0, 1, ...)."""
    spec = spec_of(seed=2**63 - 4, n=4)
    assert [spec.sample_seed(i) for i in range(4)] == [2**63 - 4, 2**63 - 3, 2**63 - 2, 2**63 - 1]
    for seed, n, rounds in ((2**63 - 1, 4, 0), (2**63 - 4, 2, 2)):
        with pytest.raises(ValidationError, match=f"largest allowed seed for n={n}"):
            spec_of(seed=seed, n=n, redraw_rounds=rounds)
    assert spec_of(seed=2**63 - 6, n=2, redraw_rounds=2).sample_seed(1, 2) == 2**63 - 1


# ------------------------------------------------------------------ the real classifier and engine


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    loaded = load_checkpoint(SHIPPED, device="cpu")
    with Engine.from_checkpoint(loaded, compile=False) as engine:
        yield engine


def test_the_engine_draws_one_seed_per_sample(engine: Engine) -> None:
    request = dict(n=4, sampler="ddim", steps=10, guidance=0.5, digit=3)
    first = engine.submit(EngineRequest(seed=100, **request)).result()
    again = engine.submit(EngineRequest(**{**request, "n": 2}, seeds=(102, 100))).result()
    torch.testing.assert_close(again, first[[2, 0]], atol=1e-4, rtol=0)  # sample i of seed s is seed s + i's
    with pytest.raises(ValueError, match="1 seeds for 2 samples"):
        engine.submit(EngineRequest(**{**request, "n": 2}, seeds=(1,)))


def test_the_shipped_classifier_reads_the_shipped_models_digits_as_the_png_shows_them(engine: Engine) -> None:
    classifier = DigitChecker(CLASSIFIER).for_model(MNIST)
    spec = spec_of(digit=3, n=4, seed=100)
    samples = engine.submit(EngineRequest(n=4, sampler="ddim", steps=10, guidance=0.5, seed=100, digit=3)).result()
    started = time.perf_counter()
    kept, check = check_samples(classifier, spec, samples)
    elapsed = time.perf_counter() - started
    assert kept is samples and check.rounds_run == 0
    labels, _ = classify(classifier.model.cpu(), to_uint8_images(samples)[..., 0])  # the PNG's 8-bit pixels
    assert [sample.digit for sample in check.samples] == labels.tolist()
    assert check.matches == sum(sample.matches for sample in check.samples) == 4
    assert all(0.5 < sample.confidence <= 1 for sample in check.samples)
    assert elapsed < 1.0, elapsed  # a few ms on a CPU


def test_a_wrong_digit_is_redrawn_through_the_engine_twice_with_the_reported_seeds(engine: Engine) -> None:
    classifier = DigitChecker(CLASSIFIER).for_model(MNIST)
    request = dict(sampler="ddim", steps=10, guidance=0.5, digit=3)  # the model draws 3s ...
    samples = engine.submit(EngineRequest(n=3, seed=40, **request)).result()
    spec = spec_of(digit=5, n=3, seed=40, redraw_rounds=2)  # ... the check asks for 5s: all mismatch
    rounds = []

    def redraw(indices: list[int], seeds: list[int]) -> torch.Tensor:
        rounds.append((indices, seeds))
        return engine.submit(EngineRequest(n=len(seeds), seeds=tuple(seeds), **request)).result()

    final, check = check_samples(classifier, spec, samples, redraw)
    assert rounds == [([0, 1, 2], [43, 44, 45]), ([0, 1, 2], [46, 47, 48])]
    assert [(sample.seed, sample.redrawn, sample.matches) for sample in check.samples] == [
        (46, 2, False),
        (47, 2, False),
        (48, 2, False),
    ]
    assert check.first_draw_matches == 0 and check.matches == 0 and check.rounds_run == 2
    alone = engine.submit(EngineRequest(n=1, seed=47, **request)).result()
    torch.testing.assert_close(final[1:2], alone, atol=1e-4, rtol=0)  # a reported seed reproduces its sample


# ------------------------------------------------------------------ the job hash


def test_the_check_lands_with_the_succeeded_status_and_only_on_a_live_job(redis_server: EmbeddedRedis) -> None:
    settings = Settings(redis_url=redis_server.url, key_prefix="checktest")
    store = JobStore(settings)
    keys = Keys("checktest")
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    check = DigitCheck(classifier="c", asked=1, matches=0, samples=[])
    client.hset(keys.job("a"), mapping={**new_job_fields(spec_of(), time.time()), "status": "running"})
    assert store.succeed("a", b"png", b"gif", 1.0, check)
    record = JobRecord.from_hash("a", client.hgetall(keys.job("a")))
    assert record.check == check and record.status.value == "succeeded"
    client.hset(keys.job("b"), mapping={**new_job_fields(spec_of(), time.time()), "status": "cancelled"})
    assert not store.succeed("b", b"png", b"gif", 1.0, DigitCheck(skipped="late"))
    assert CHECK_FIELD not in client.hgetall(keys.job("b"))  # an ended job is not touched
    client.hset(keys.job("a"), CHECK_FIELD, "{not json")
    assert JobRecord.from_hash("a", client.hgetall(keys.job("a"))).check is None  # never hides the job


# ------------------------------------------------------------------ a classifier paired to a model of other data


COLOURS = ["red", "blue"]


def colour_images(labels: list[int], seed: int) -> np.ndarray:
    """uint8 (N, 3, 8, 8): red (class 0) or blue (class 1) squares over noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 80, (len(labels), 3, 8, 8)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 0 if label == 0 else 2, 2:6, 2:6] = 255
    return images


@pytest.fixture(scope="module")
def sprites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained two-class RGB classifier beside a (would-be) model ``sprites.safetensors``."""
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("paired")
    labels = [0, 1] * 40
    images = colour_images(labels, 0)
    config = ClassifierConfig(channels=(4, 8, 8), blocks=(1, 1, 1), num_classes=2, in_channels=3, image_size=8)
    trained = train_classifier(
        images, np.array(labels), config, ClassifierTrainConfig(epochs=3, batch_size=16, learning_rate=1e-2)
    )
    info = {
        "test_accuracy": 1.0,
        "dataset": "npy:sprites.npy",
        "class_names": COLOURS,
        "dataset_fingerprint": data_fingerprint(images, np.array(labels), COLOURS),
    }
    save_classifier(paired_classifier_path(directory / "sprites.safetensors"), trained, info)
    return directory / "sprites.safetensors"


def test_a_classifier_beside_the_model_checks_its_classes_by_name(sprites: Path) -> None:
    checker = DigitChecker(CLASSIFIER)  # the default MNIST classifier cannot judge sprites; their own one can
    sprite_model = model("npy:sprites.npy", (3, 8, 8), COLOURS, path=sprites)
    classifier = checker.for_model(sprite_model)
    assert isinstance(classifier, Classifier) and classifier.name == "sprites_classifier"
    assert classifier.class_names == ("red", "blue")

    samples = torch.from_numpy(colour_images([0, 1, 0], 7)).float() / 127.5 - 1
    _, check = check_samples(classifier, spec_of(digit=0, n=3, seed=5), samples)
    assert check.kind == "classifier" and check.asked == 0 and check.asked_class == "red"
    read = [(s.label, s.class_name, s.digit) for s in check.samples]
    assert read == [(0, "red", 0), (1, "blue", 1), (0, "red", 0)]  # digit: the index, as the page reads it
    assert [s.matches for s in check.samples] == [True, False, True] and check.matches == 2
    assert check.classifier_test_accuracy == 1.0

    # the same classifier refuses a model of other classes, shape or data
    swapped = model("npy:sprites.npy", (3, 8, 8), ["blue", "red"], path=sprites)
    assert checker.for_model(swapped) == (
        "the classifier sprites_classifier was trained on other classes than the model's"
    )
    assert checker.for_model(model("npy:sprites.npy", (3, 16, 16), COLOURS, path=sprites)) == (
        "no classifier for samples of shape (3, 16, 16)"
    )
    other_data = model("npy:sprites.npy", (3, 8, 8), COLOURS, path=sprites, data_fingerprint="0" * 64)
    assert checker.for_model(other_data) == (
        "the classifier sprites_classifier was trained on other data than the model (fingerprints differ)"
    )
    fingerprint = data_fingerprint(colour_images([0, 1] * 40, 0), np.array([0, 1] * 40), COLOURS)
    same_data = model("npy:sprites.npy", (3, 8, 8), COLOURS, path=sprites, data_fingerprint=fingerprint)
    assert checker.for_model(same_data) is classifier
    assert checker.for_model(model("npy:other.npy", (3, 8, 8), COLOURS, path=sprites)) == (
        "no classifier for dataset 'npy:other.npy'"
    )


def test_a_replaced_classifier_file_is_loaded_again(sprites: Path, tmp_path: Path) -> None:
    import shutil

    target = tmp_path / "sprites.safetensors"
    shutil.copy(paired_classifier_path(sprites), paired_classifier_path(target))
    checker = DigitChecker(CLASSIFIER)
    first = checker.for_model(model("npy:sprites.npy", (3, 8, 8), COLOURS, path=target))
    assert isinstance(first, Classifier)
    paired_classifier_path(target).write_bytes(b"broken now")
    assert checker.for_model(model("npy:sprites.npy", (3, 8, 8), COLOURS, path=target)) == (
        "the classifier sprites_classifier.safetensors cannot be loaded"
    )


# ------------------------------------------------------------------ points


def test_checkerboard_points_are_measured_on_the_black_squares() -> None:
    generator = torch.Generator().manual_seed(0)
    from ddpm_core.data import CheckerboardData

    real, _ = CheckerboardData().sample_batch(4000, generator)
    check = check_points(CHECKERBOARD, real)
    assert check.kind == "points" and check.skipped is None and check.samples == []
    assert check.points.measure == "on_black_squares"
    assert (check.points.fraction, check.points.count, check.points.total) == (1.0, 4000, 4000)
    assert (check.points.reference, check.points.chance) == (1.0, 0.5)

    uniform = torch.rand(4000, 2, generator=generator) * 2 - 1
    spread = check_points(CHECKERBOARD, uniform).points
    assert 0.45 < spread.fraction < 0.55 and spread.count == round(spread.fraction * 4000)
    half = torch.tensor([[-0.75, -0.75], [-0.25, -0.75], [0.9, 0.9], [5.0, 5.0]])  # black, white, black, off the board
    assert check_points(CHECKERBOARD, half).points.fraction == 0.5
    with pytest.raises(ValueError, match="expected points"):
        check_points(CHECKERBOARD, torch.zeros(4, 3))
    assert DigitCheck.model_validate_json(check.model_dump_json()) == check


def test_records_written_before_the_per_class_check_still_parse() -> None:
    older = (
        '{"classifier":"mnist_classifier","asked":3,"matches":1,"first_draw_matches":1,"samples":'
        '[{"index":0,"digit":3,"confidence":0.99,"seed":7,"matches":true,"redrawn":0}]}'
    )
    check = DigitCheck.model_validate_json(older)
    assert check.kind == "classifier" and check.points is None
    (sample,) = check.samples
    assert (sample.label, sample.class_name, sample.digit, sample.seed) == (3, "3", 3, 7)
    assert DigitCheck.model_validate_json('{"skipped":"no classifier for dataset \'checkerboard\'"}').kind is None
