"""Where the MNIST files are and where they come from: their names, the default data directory,
the mirrors, their checksums, and the one function that finds them on disk. Torch- and numpy-free.

The checksum of a file is the SHA-256 of its IDX content, the bytes after gunzip: mirrors (and
copies made with another gzip) compress the same content differently, so a hash of the
compressed bytes would refuse good copies. A raw (not gzipped) IDX file has the same checksum.

Configuration, strongest first: the command's options, then the environment
(``DDPM_MNIST_MIRRORS``: URLs separated by commas or spaces; ``DDPM_MNIST_SHA256``:
``NAME=HEX`` pairs separated by commas, for a mirror serving other files), then the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ddpm_core.errors import DatasetError, UsageError

DEFAULT_MNIST_DIR = "data/mnist"
MIRRORS_ENV = "DDPM_MNIST_MIRRORS"
SHA256_ENV = "DDPM_MNIST_SHA256"

# (split, kind) -> the file's stem; the files are named STEM.gz (as published) or STEM (raw)
MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# SHA-256 of each file's IDX content (after gunzip): 47,040,016, 60,008, 7,840,016 and 10,008 bytes
MNIST_CONTENT_SHA256 = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# tried in order: PyTorch's copy on S3, then the CVDF copy TensorFlow uses
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_CLASS_NAMES = [str(digit) for digit in range(10)]


@dataclass(frozen=True)
class MnistSource:
    """What ``ddpm data fetch mnist`` downloads: file name -> content SHA-256, and the mirrors to try in order."""

    files: Mapping[str, str]
    mirrors: tuple[str, ...]

    @classmethod
    def configured(cls, mirrors: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> MnistSource:
        """The mirrors given (else ``DDPM_MNIST_MIRRORS``, else the defaults) and the checksums
        (``DDPM_MNIST_SHA256`` overriding the defaults file by file).

        Raises:
            UsageError: a mirror is not an http(s) URL, or ``DDPM_MNIST_SHA256`` is malformed.
        """
        environ = os.environ if environ is None else environ
        if not mirrors:
            mirrors = environ.get(MIRRORS_ENV, "").replace(",", " ").split() or DEFAULT_MIRRORS
        for mirror in mirrors:
            if not mirror.startswith(("http://", "https://")):
                raise UsageError(f"mirror {mirror!r} is not an http:// or https:// URL")
        files = dict(MNIST_CONTENT_SHA256)
        for pair in filter(None, (part.strip() for part in environ.get(SHA256_ENV, "").split(","))):
            name, _, digest = pair.partition("=")
            digest = digest.strip().lower()
            if name.strip() not in files or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
                raise UsageError(
                    f"{SHA256_ENV}: expected NAME=SHA256 pairs with NAME one of {', '.join(files)}, got {pair!r}"
                )
            files[name.strip()] = digest
        return cls(files=files, mirrors=tuple(mirror if mirror.endswith("/") else mirror + "/" for mirror in mirrors))


def fetch_command(directory: str | Path) -> str:
    """The command that downloads MNIST into ``directory``."""
    return f"ddpm data fetch mnist --dir {directory}"


def find_mnist_files(data_dir: str | Path, splits: Sequence[str] = ("train", "test")) -> dict[tuple[str, str], Path]:
    """The MNIST files of ``splits`` in ``data_dir`` ((split, kind) -> path, ``STEM.gz`` or raw
    ``STEM``). Nothing is downloaded: ``ddpm train`` and ``ddpm evaluate`` both look here.

    Raises:
        DatasetError: an unknown split, or files missing (one line naming the fetch command).
    """
    directory = Path(data_dir)
    unknown = [split for split in splits if split not in ("train", "test")]
    if unknown:
        raise DatasetError(f"unknown MNIST split {unknown[0]!r}; expected 'train' or 'test'")
    found: dict[tuple[str, str], Path] = {}
    missing: list[str] = []
    for (split, kind), stem in MNIST_FILES.items():
        if split not in splits:
            continue
        path = next((directory / name for name in (stem + ".gz", stem) if (directory / name).is_file()), None)
        if path is None:
            missing.append(stem + ".gz")
        else:
            found[(split, kind)] = path
    if missing:
        where = "does not exist" if not directory.is_dir() else f"lacks {', '.join(missing)}"
        raise DatasetError(f"no MNIST data: {directory} {where}; fetch it with: {fetch_command(directory)}")
    return found
