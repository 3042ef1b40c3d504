"""Outputs that are never half written: temp names in the same folder, fsync, then renames held together.

Used by every command that writes files a later run reads back (the video and its plan, plan
files, exports). Each output is written under a hidden temp name beside its target; only when all
of them are complete are they fsynced and renamed over their targets, with SIGINT and SIGTERM held
for the renames, so an interruption leaves either the old files or the new ones, never a partial
video beside the previous run's plan. Temps of an interrupted write are removed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path


def temp_for(path: Path) -> Path:
    """A hidden name beside `path`, with its suffix (writers pick their format by it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    """Make renames and new entries in `folder` durable (skipped where the filesystem cannot sync a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT / SIGTERM delivered only after the block (a no-op off the main thread or without sigmask)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def commit(pairs: list[tuple[Path, Path]]) -> list[Path]:
    """fsync every (temp, target) temp, then rename them all onto their targets, signals held; the targets."""
    for temp, _ in pairs:
        fsync_file(temp)
    with signals_held():
        for temp, target in pairs:
            os.replace(temp, target)
    for folder in {target.parent for _, target in pairs}:
        fsync_dir(folder)
    return [target for _, target in pairs]


@contextlib.contextmanager
def staged() -> Iterator[list[tuple[Path, Path]]]:
    """Collect (temp, target) pairs while writing; commit them all at the end of the block, or remove the temps
    when the block raises (KeyboardInterrupt included)."""
    pairs: list[tuple[Path, Path]] = []
    try:
        yield pairs
        commit(pairs)
    except BaseException:
        for temp, _ in pairs:  # those not renamed yet (a rename moves the temp away)
            with contextlib.suppress(OSError):
                temp.unlink()
        raise


def write_text(path: Path, text: str) -> Path:
    """One text file, atomically."""
    path = Path(path)
    temp = temp_for(path)
    with staged() as pairs:
        pairs.append((temp, path))
        temp.write_text(text, encoding="utf-8")
    return path
