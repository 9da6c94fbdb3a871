"""Files a user opens are written whole or not at all: to a temporary file beside, then renamed.

The renamed file gets the permissions a plain ``open(path, "w")`` would give it (the user's umask,
or the mode of the file it replaces), not the private 0600 of a temporary file. A target that is
a device, a FIFO or a socket is refused: renaming over it would replace ``/dev/null`` with a file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

from explorer.checks import OptionError, special_kind

__all__ = ["atomic_path", "current_umask"]


def current_umask() -> int:
    """This process's umask (read from /proc where it can be, so no thread sees it changed)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: Union[str, Path], field: str = "out") -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success it replaces ``target`` in one rename.

    A failure (a full disk, an exception while writing) removes the temporary file and leaves any
    earlier ``target`` as it was, so a reader never sees a half-written page or table. A special
    file as ``target`` raises :class:`~explorer.checks.OptionError` naming ``field``.
    """
    target = Path(target)
    kind = special_kind(target)
    if kind is not None:
        raise OptionError(field, str(target), f"a regular file path; {target} is {kind}, which an output never replaces")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.stat(target).st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)
