"""Files written so that a reader never sees half of one, and the cache folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (os.umask can only be read by setting it)


def atomic_write(path: Path, write: Callable[[str], object], suffix: str = ".tmp") -> Path:
    """Call write(tmp) on a fresh temporary file beside `path`, then rename it into place.

    Each call gets its own temporary name, so two processes writing the same path (two drivers
    sharing a study) cannot rename each other's half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600; an output is as readable as any file the user creates (0644 under
        # umask 022), so that a team can serve reports and artifacts from a shared folder.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def cache_dir() -> Path:
    """Where artifacts (ONNX exports, reference outputs) and result journals are kept."""
    root = os.environ.get("AUTOTUNE_CACHE_DIR") or Path.home() / ".cache" / "autotune"
    return Path(root)
