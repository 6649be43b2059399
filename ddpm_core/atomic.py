"""Atomic file writes: write a temporary sibling, then rename it onto the target.

A reader (or a crash) never sees a half-written file: the target is either the old file or the
complete new one, because a rename within one directory is atomic.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on failure remove it.

    The parent directory is created when missing. The temporary name is hidden and ends in
    ``.tmp`` (``.NAME.PID.RANDOM.tmp``), so globs for ``*.safetensors`` never match it.

        with atomic_path(target) as temporary:
            temporary.write_bytes(payload)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
