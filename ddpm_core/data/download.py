"""Downloading data files from a list of mirrors, verified by checksum, with resume and retries.

Each file is streamed (httpx) into ``NAME.<mirror id>.part`` beside its target: a transfer cut
short is resumed with an HTTP Range request, on the next try or the next run, from the same
mirror (another mirror may compress the same content differently, so its bytes never continue
this one's). A finished file is moved into place only when its checksum matches; a mismatch is
deleted and the next mirror tried. A mirror that cannot be reached is skipped at once; a transfer
that breaks off is retried. Torch-free.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from ddpm_core.data.mnist_source import MnistSource
from ddpm_core.errors import DatasetError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fetched:
    """One file after :func:`fetch_file`: where it is, and the mirror it came from (None: already there)."""

    path: Path
    source: str | None


def content_sha256(path: Path, gzipped: bool) -> str | None:
    """SHA-256 of a file's content (gunzipped when ``gzipped``); None when it is not valid gzip."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") if gzipped else path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def _part_path(target: Path, mirror: str) -> Path:
    """The partial download of ``target`` from ``mirror``: ``NAME.<8 hex of the mirror>.part``."""
    return target.with_name(f"{target.name}.{hashlib.sha256(mirror.encode()).hexdigest()[:8]}.part")


def fetch_file(
    client: httpx.Client,
    name: str,
    sha256: str,
    mirrors: tuple[str, ...],
    directory: Path,
    *,
    progress: bool = True,
    retries: int = 3,
    backoff_s: float = 1.0,
) -> Fetched:
    """``directory/name``, downloaded from the first mirror (``mirror + name``) that serves it
    with content SHA-256 ``sha256``; a file already there with that checksum is kept.

    ``progress``: show a byte bar (on a terminal only). ``retries``: tries per mirror of a
    transfer that breaks off (each resumes), ``backoff_s`` times the try number apart.

    Raises:
        DatasetError: no mirror served a good copy (one line, each mirror's failure named).
    """
    target = directory / name
    gzipped = target.suffix == ".gz"
    if target.is_file():
        if content_sha256(target, gzipped) == sha256:
            logger.debug("%s is already there (checksum verified)", target)
            return Fetched(target, None)
        logger.warning("%s does not match its checksum: deleted, downloading it again", target)
        target.unlink()  # never left in place as if good, should no mirror serve a good copy
    directory.mkdir(parents=True, exist_ok=True)
    failures = []
    for mirror in mirrors:
        url = mirror + name
        part = _part_path(target, mirror)
        for attempt in range(1, retries + 1):
            try:
                _stream(client, url, part, progress)
            except httpx.ConnectError as error:  # an unreachable mirror: no point in retrying it
                failures.append(f"{mirror}: cannot connect ({error})")
                break
            except httpx.HTTPStatusError as error:
                failures.append(f"{mirror}: HTTP {error.response.status_code}")
                break
            except httpx.TransportError as error:
                logger.warning("%s broke off (%s); try %d of %d", url, error or type(error).__name__, attempt, retries)
                if attempt == retries:
                    failures.append(f"{mirror}: {error or type(error).__name__}")
                else:
                    time.sleep(backoff_s * attempt)
                continue
            if content_sha256(part, gzipped) != sha256:
                part.unlink(missing_ok=True)
                failures.append(f"{mirror}: checksum mismatch")
                logger.warning("%s: checksum mismatch, deleted", url)
                break
            os.replace(part, target)
            logger.debug("downloaded %s to %s", url, target)
            return Fetched(target, mirror)
    raise DatasetError(f"could not download {name}: {'; '.join(failures)}")


def fetch_mnist(
    directory: str | Path, source: MnistSource, *, progress: bool = True, retries: int = 3, timeout_s: float = 30.0
) -> list[Fetched]:
    """Every file of ``source`` in ``directory``, downloaded (and verified) where missing or bad."""
    timeout = httpx.Timeout(timeout_s)
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        return [
            fetch_file(client, name, sha256, source.mirrors, Path(directory), progress=progress, retries=retries)
            for name, sha256 in source.files.items()
        ]


def _stream(client: httpx.Client, url: str, part: Path, progress: bool) -> None:
    """Append ``url``'s bytes to ``part`` from its current size (a Range request), or write them
    afresh when the server ignores the range. Raises httpx errors as they come."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset:  # nothing after offset: the part is complete
            return
        response.raise_for_status()
        resumed = response.status_code == 206 and response.headers.get("content-range", "").startswith(
            f"bytes {offset}-"
        )
        if offset and not resumed:
            logger.info("%s does not resume: downloading it from the start", url)
            offset = 0
        elif offset:
            logger.info("resuming %s at byte %d", url, offset)
        length = response.headers.get("content-length")
        total = offset + int(length) if length and length.isdigit() else None
        with (
            part.open("ab" if offset else "wb") as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.split(".")[0],
                disable=None if progress else True,  # None: a bar on a terminal only
                leave=False,
            ) as bar,
        ):
            for chunk in response.iter_bytes():  # as it arrives: a break-off keeps all but the last bytes
                handle.write(chunk)
                bar.update(len(chunk))
