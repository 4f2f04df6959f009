"""Files that only their owner may read: 0600 files in 0700 directories.

Used by every writer of a silo's private state (``state/silos/<silo>/``: its users' embeddings and optimizer state,
the coordinator it trusted, its keys), of the silo's own data copies (``data/silos/<silo>/``,
``data/snapshots/<silo>/``, ``data/split/<silo>/``, ``data/feedback/<silo>/``) and of the silo host processes' logs
(``state/logs/<run>/``). Set where each file is written, not by a process-wide umask: the exchange, the public
catalogue and the reports stay readable by whoever shares them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: str | Path, *, below: str | Path | None = None) -> Path:
    """``path`` made (with its parents) and set to 0700, as is every directory between ``below`` (excluded, an
    ancestor of ``path``) and it. Directories above ``below`` keep their permissions."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    chain = [path]
    if below is not None:
        stop = Path(below).resolve()
        chain += [p for p in path.resolve().parents if stop in p.parents]
    for directory in chain:
        directory.chmod(PRIVATE_DIR)
    return path


@contextlib.contextmanager
def private_file(path: str | Path, *, overwrite: bool = True, below: str | Path | None = None) -> Iterator[BinaryIO]:
    """Write ``path`` atomically, readable by its owner only: yields a binary file that is a temporary file
    beside ``path``, created 0600, and renamed over ``path`` once the block ends (removed if it raises). Its
    directory is made 0700 (see :func:`private_dir` for ``below``). ``overwrite=False``: an existing ``path`` is
    never replaced (:class:`FileExistsError`)."""
    path = Path(path)
    private_dir(path.parent, below=below)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mkstemp: 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic, and refuses an existing target
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_private_bytes(path: str | Path, data: bytes, *, below: str | Path | None = None) -> None:
    """``data`` written to ``path`` atomically, 0600 in a 0700 directory."""
    with private_file(path, below=below) as fh:
        fh.write(data)


def open_private_log(path: str | Path) -> BinaryIO:
    """``path`` opened for writing (truncated), 0600 even if it existed with other permissions; the caller closes
    it. For a log a child process writes through its own descriptor (no rename possible)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    return os.fdopen(fd, "wb")
