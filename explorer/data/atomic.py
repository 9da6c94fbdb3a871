"""Files a user opens are written whole or not at all: to a temporary file beside, then renamed."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_path"]


@contextlib.contextmanager
def atomic_path(target: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success it replaces ``target`` in one rename.

    A failure (a full disk, an exception while writing) removes the temporary file and leaves any
    earlier ``target`` as it was, so a reader never sees a half-written page or table.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)
