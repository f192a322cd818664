"""Files written so that a reader never sees half of one, and the cache folder."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from autotuner.errors import UsageError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (os.umask can only be read by setting it)
# In temporary names: a shared folder (NFS) may hold another host's writer, whose pid means nothing here.
_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"


def atomic_write(path: Path, write: Callable[[str], object], suffix: str = ".tmp") -> Path:
    """Call write(tmp) on a fresh temporary file beside `path`, then rename it into place.

    Each call gets its own temporary name, so two processes writing the same path (two drivers
    sharing a study) cannot rename each other's half-written file. The name carries this host
    and process (`.NAME.HOST-PID.XXXXXXXX.tmp`), so that the next write of the same path removes
    what a killed writer on this host left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    prefix = f".{path.name}.{_HOST}-{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
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


def sweep_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files of `path` whose writer, a process on this host, is gone."""
    removed = []
    start = f".{path.name}.{_HOST}-"
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for f in siblings:
        if not f.name.startswith(start):
            continue
        pid = f.name[len(start) :].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass  # another sweeper got it first
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a reused pid counts as alive: what
    it guards is then kept, never removed). Pids below 1 name no single process: not alive."""
    if pid < 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(folder: Path, what: str) -> None:
    """UsageError (exit 2) now, when outputs could not be written into `folder` later. Leaves no
    trace: folders it had to create to find out are removed again."""

    folder = Path(folder)
    missing = [d for d in (folder, *folder.parents) if not d.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".autotune-probe-"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UsageError(f"{what}: cannot write into {folder}: {reason}") from None
    finally:
        for d in missing:  # deepest first
            try:
                d.rmdir()
            except OSError:
                pass


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content (hex), read in 1 MiB blocks: model files can be large."""

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_sha256(path: Path) -> str:
    """file_sha256, remembered in the cache folder under the file's identity on disk (device,
    inode, size, mtime and ctime in nanoseconds): a big model file is read once, not once a
    run. Any write to the file changes its ctime (which no tool can set back), so a changed
    file is always read again."""

    path = Path(path).resolve()
    st = path.stat()
    stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    memo = cache_dir() / "file-hashes" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
    try:
        known = json.loads(memo.read_text())
        if known.get("stamp") == stamp and known.get("path") == str(path):
            return str(known["sha256"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # not remembered yet (or written by another version): read below
    digest = file_sha256(path)
    if path.stat().st_ctime_ns == st.st_ctime_ns:  # not written while it was read
        try:
            atomic_write_text(memo, json.dumps({"path": str(path), "stamp": stamp, "sha256": digest}))
        except OSError:
            pass  # a cache that cannot be written costs a re-read next time, nothing else
    return digest


def tree_sha256(folder: Path) -> str:
    """One hash of a folder's files: each regular file's path below it and content, in name
    order; hidden files and folders (.git, .cache) are left out."""

    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(f"{rel.as_posix()}\0{content_sha256(f)}\0".encode())
    return h.hexdigest()


def cache_dir() -> Path:
    """Where artifacts (ONNX exports, reference outputs) and result journals are kept."""
    root = os.environ.get("AUTOTUNE_CACHE_DIR") or Path.home() / ".cache" / "autotune"
    return Path(root)
