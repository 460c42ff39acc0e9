"""Output directories of `eval`, `sweep` and `train-tiny`: checked before use, one writer at a time.

    with locked(out):          # a second writer, in this process or another, is refused with our pid
        ...write into out...

The lock is `fcntl.flock` on `OUT/.lock`, which the kernel drops when the holder exits, however it
exits (a killed run leaves no stale lock). The file is left in place: removing it would let a
writer that opened it just before lock a file no one else can see. Where `fcntl` does not exist
(Windows), nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

LOCK = ".lock"


class BusyError(ValueError):
    """Another process is writing into the directory."""


def check_out_dir(out: str | Path, flag: str = "--out") -> Path:
    """Return `out` as a Path if it is a directory or could be made one, else raise naming it.

    Nothing is created: commands check their output directory before they accept the rest.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file, not a directory; give a directory")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise ValueError(f"{flag} {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out}: {parent} is not writable")
    return out


def contents(out: Path) -> list[str]:
    """Return the names in `out` other than its lock file (none when it does not exist), sorted."""
    return sorted(p.name for p in out.iterdir() if p.name != LOCK) if out.is_dir() else []


@contextlib.contextmanager
def locked(out: str | Path) -> Iterator[Path]:
    """Create `out` if needed and hold its exclusive lock for the block; refuse if another holds it."""
    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock on this platform
        yield out
        return
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise BusyError(
                f"{out} is in use by another writer (process {holder}); wait for it to finish "
                "or use another output directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield out
    finally:
        os.close(fd)  # closing the descriptor drops the lock
