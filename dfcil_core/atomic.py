"""Every file of the project is written under a temporary name in its folder and renamed into place, so that a
reader, or a job killed while writing, never takes half a file for a result."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` writes the content to `tmp`; then it replaces `path` in one rename. Makes the folder if needed
    (also one removed under a running job)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))
