"""``ddpm data fetch mnist`` against a real HTTP server in a thread serving tiny fake files, whose
checksums the tests give through ``DDPM_MNIST_SHA256`` as a user would: the corrupt copy
refused, the unreachable mirror passed over, the broken-off transfer resumed, nothing fetched twice."""

from __future__ import annotations

import gzip
import hashlib
import io
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import ddpm_core.cli as cli
from ddpm_core.data.mnist_source import MNIST_CONTENT_SHA256, SHA256_ENV, MnistSource

NAMES = list(MNIST_CONTENT_SHA256)


@dataclass
class Mirror:
    """What the server serves (path -> bytes), what it was asked (path, Range header), and the
    paths whose first response breaks off after ``cut`` bytes."""

    files: dict[str, bytes]
    cut: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""


def fake_files() -> dict[str, bytes]:
    """Four gzipped 'IDX' files of 200 kB of different pseudo-random (incompressible) content each."""
    files = {}
    for name in NAMES:
        blocks = [hashlib.sha256(f"{name}{index}".encode()).digest() for index in range(6400)]
        files[name] = gzip.compress(b"".join(blocks), mtime=0)
    return files


def checksums(files: dict[str, bytes]) -> str:
    return ",".join(f"{name}={hashlib.sha256(gzip.decompress(data)).hexdigest()}" for name, data in files.items())


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    state = Mirror(files=fake_files())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            name = self.path.rsplit("/", 1)[-1]
            state.requests.append((name, self.headers.get("Range")))
            data = state.files.get(name)
            if data is None:
                self.send_error(404)
                return
            start = 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            cut = state.cut.pop(name, None)
            self.wfile.write(data[start:cut] if cut is not None else data[start:])
            if cut is not None:  # the connection drops mid-body
                self.wfile.flush()
                self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/mnist/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def dead_url() -> str:
    """A URL on a port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def fetch(capsys, directory: Path, *mirrors: str, extra: tuple[str, ...] = ()) -> tuple[int, str, list[str]]:
    """``ddpm data fetch mnist`` in this process: exit status, stdout, stderr lines."""
    capsys.readouterr()
    args = ["data", "fetch", "mnist", "--dir", str(directory), "--no-progress", "--retries", "2", *extra]
    for url in mirrors:
        args += ["--mirror", url]
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def test_fetch_passes_an_unreachable_mirror_and_skips_good_files(mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(SHA256_ENV, checksums(mirror.files))
    code, out, err = fetch(capsys, tmp_path / "mnist", dead_url(), mirror.url)
    assert code == 0, err
    for name, data in mirror.files.items():
        assert (tmp_path / "mnist" / name).read_bytes() == data
    assert f"downloaded from {mirror.url}" in out and str((tmp_path / "mnist").resolve()) in out
    assert sorted(path.name for path in (tmp_path / "mnist").iterdir()) == sorted(NAMES)  # no part files left
    mirror.requests.clear()
    code, out, _ = fetch(capsys, tmp_path / "mnist", mirror.url)
    assert code == 0 and mirror.requests == [] and out.count("already there") == 4


def test_a_corrupt_file_is_refused_and_not_left_in_place(mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(SHA256_ENV, checksums(mirror.files))
    good = dict(mirror.files)
    name = NAMES[0]
    mirror.files[name] = gzip.compress(b"not the data" * 100)
    code, _, err = fetch(capsys, tmp_path / "mnist", mirror.url)
    assert code == 2 and len(err) == 1 and "checksum mismatch" in err[0] and name in err[0], err
    assert not (tmp_path / "mnist" / name).exists()
    assert not list((tmp_path / "mnist").glob("*.part"))
    # a bad file already in place is deleted, even when no good copy can be had, then downloaded again
    (tmp_path / "mnist" / name).write_bytes(gzip.compress(b"stale"))
    code, _, err = fetch(capsys, tmp_path / "mnist", mirror.url)
    assert code == 2 and not (tmp_path / "mnist" / name).exists()
    mirror.files[name] = good[name]
    (tmp_path / "mnist" / name).write_bytes(gzip.compress(b"stale"))
    code, _, err = fetch(capsys, tmp_path / "mnist", mirror.url)
    assert code == 0, err
    assert (tmp_path / "mnist" / name).read_bytes() == good[name]


def test_an_interrupted_download_resumes_with_a_range_request(mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(SHA256_ENV, checksums(mirror.files))
    name = NAMES[0]
    half = len(mirror.files[name]) // 2
    mirror.cut[name] = half
    code, _, err = fetch(capsys, tmp_path / "mnist", mirror.url, extra=("--retries", "2"))
    assert code == 0, err
    asked = [rng for requested, rng in mirror.requests if requested == name]
    assert len(asked) == 2 and asked[0] is None and asked[1].startswith("bytes="), asked
    assert 0 < int(asked[1].removeprefix("bytes=").rstrip("-")) <= half  # resumed, not restarted
    assert (tmp_path / "mnist" / name).read_bytes() == mirror.files[name]


def test_the_progress_bar_shows_on_a_terminal_only(mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(SHA256_ENV, checksums(mirror.files))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for flags, shown in (((), True), (("--no-progress",), False)):
        terminal = Terminal()
        monkeypatch.setattr("sys.stderr", terminal)
        args = ["data", "fetch", "mnist", "--dir", str(tmp_path / str(shown)), "--mirror", mirror.url, *flags]
        assert cli.main(args) == 0
        assert ("B/s" in terminal.getvalue()) is shown, terminal.getvalue()


def test_configuration_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(SHA256_ENV, "nonsense")
    code, _, err = fetch(capsys, tmp_path, "http://127.0.0.1:9/")
    assert code == 2 and len(err) == 1 and SHA256_ENV in err[0]
    monkeypatch.delenv(SHA256_ENV)
    code, _, err = fetch(capsys, tmp_path, "ftp://example.org/")
    assert code == 2 and len(err) == 1 and "not an http" in err[0]
    assert MnistSource.configured(environ={"DDPM_MNIST_MIRRORS": "http://a/x, http://b/"}).mirrors == (
        "http://a/x/",
        "http://b/",
    )
