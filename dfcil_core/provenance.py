"""What ties a result to the code and data that made it. Free of torch, so the workflow and `dfcil stale`
can use it cheaply.

- `code_digest()`: a hash of the package source that is running (every .py and .yaml file of dfcil_core),
  recorded with every task's metrics. It replaces a hand-bumped version number: any edit of the code changes
  it, whether or not someone remembered to bump anything.
- `file_digest(path)`: the hash of a file's bytes (what `dfcil prepare-data` stores next to a prepared
  dataset, so that jobs check the stored digest instead of hashing gigabytes each).
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_SUFFIXES = (".py", ".yaml")


@functools.cache
def code_digest() -> str:
    """sha256 (16 hex digits) over the relative path and bytes of every source file of the package."""
    h = hashlib.sha256()
    for path in sorted(p for p in PACKAGE_DIR.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()):
        h.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def git_commit() -> str:
    """The checkout's commit, for readers; `code_digest` is what identifies the code that ran."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             cwd=PACKAGE_DIR, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
