"""Path confinement: one rule for every folder a name is looked up in (model folders, shard indexes,
bundles, ComfyUI's input and output folders). The name is joined to its folder and both are resolved
(symlinks followed, `..` collapsed); a name whose real path leaves the folder is refused."""

from __future__ import annotations

import os
from pathlib import Path


def within(folder: str | os.PathLike, name: str) -> Path | None:
    """The real path of `folder / name` when it stays inside `folder`'s real path, else None (an absolute
    name, `..`, or a symlink pointing out). The path need not exist."""
    root = Path(folder).resolve()
    path = (Path(folder) / name).resolve()
    return path if path.is_relative_to(root) else None


def plain_entry(name: str) -> bool:
    """Whether `name` is a relative name with no `..` step (a choice listed from a folder, as typed into a
    workflow): absolute paths and `..` are never entries of a folder."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and not name.startswith(("/", "\\"))
