"""The one validation path: every option, setting and knob is checked with these helpers.

Each check raises :class:`OptionError` (a ``ValueError``) whose text names the field, the value
and what is allowed, e.g. ``invalid measure.warmup_s=inf: a finite number >= 0``. Numbers are
always finite here: ``inf`` and ``nan`` never pass a number check, and booleans never pass as
numbers (``True`` is an ``int`` to Python, not to a user).

Plain Python only, so every layer (models included) can use it without importing anything else.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any, Collection, Optional, Union

__all__ = ["OptionError", "is_int", "is_number", "require", "check_int", "check_number", "check_bool",
           "check_choice", "check_text", "check_output_file", "check_output_folder", "special_kind"]


class OptionError(ValueError):
    """A bad value for a named field; ``field``, ``value`` and ``allowed`` are kept for callers."""

    def __init__(self, field: str, value: Any, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"invalid {field}={value!r}: {allowed}")


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require(ok: bool, field: str, value: Any, allowed: str) -> None:
    """Raise :class:`OptionError` unless ``ok``."""
    if not ok:
        raise OptionError(field, value, allowed)


class Problems:
    """Collects the problems of one source (a file, a config) instead of stopping at the first,
    so a user fixes them all in one go: each line is ``SOURCE: FIELD=VALUE: ALLOWED`` (an
    :class:`OptionError`'s parts with the source in front), each kept once. The caller raises
    its own error over :attr:`lines` (``SpaceError`` for a space)."""

    def __init__(self, source: str):
        self.source = source
        self.lines: list[str] = []

    def add(self, field: str, value: Any, allowed: str) -> None:
        self.note(f"{field}={value!r}: {allowed}")

    def note(self, text: str) -> None:
        """A problem that is not one field's value (the line gets the source in front)."""
        line = f"{self.source}: {text}"
        if line not in self.lines:
            self.lines.append(line)

    def __bool__(self) -> bool:
        return bool(self.lines)


def _bounds_text(low: Optional[float], high: Optional[float], low_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return " and ".join(parts)


def _in_bounds(value: float, low: Optional[float], high: Optional[float], low_open: bool) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or value <= high


def _refuse(field: str, value: Any, kind: str, low: Optional[float], high: Optional[float], low_open: bool,
            optional: bool, none_means: str) -> OptionError:
    bounds = _bounds_text(low, high, low_open)
    text = kind + (f" {bounds}" if bounds else "")
    if optional:
        text += f", or null{f' ({none_means})' if none_means else ''}"
    return OptionError(field, value, text)


def check_int(field: str, value: Any, *, low: Optional[int] = None, high: Optional[int] = None,
              optional: bool = False, none_means: str = "") -> Optional[int]:
    """An integer within [low, high]; ``None`` passes when ``optional`` (``none_means`` says what it means)."""
    if value is None and optional:
        return None
    if not (is_int(value) and _in_bounds(value, low, high, False)):
        raise _refuse(field, value, "an integer", low, high, False, optional, none_means)
    return int(value)


def check_number(field: str, value: Any, *, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, optional: bool = False, none_means: str = "") -> Optional[float]:
    """A finite number within its bounds (``low_open``: strictly above ``low``)."""
    if value is None and optional:
        return None
    if not (is_number(value) and _in_bounds(value, low, high, low_open)):
        raise _refuse(field, value, "a finite number", low, high, low_open, optional, none_means)
    return float(value)


def check_bool(field: str, value: Any) -> bool:
    require(isinstance(value, bool), field, value, "true or false")
    return bool(value)


def check_choice(field: str, value: Any, choices: Collection[Any]) -> Any:
    require(value in choices and not isinstance(value, bool), field, value,
            "one of " + ", ".join(str(c) for c in choices))
    return value


def check_text(field: str, value: Any, *, optional: bool = False, none_means: str = "") -> Optional[str]:
    """A non-empty string."""
    if value is None and optional:
        return None
    if not (isinstance(value, str) and value.strip()):
        raise OptionError(field, value, "a non-empty string" + (f", or null ({none_means})" if optional else ""))
    return value


def special_kind(path: Union[str, Path]) -> Optional[str]:
    """What a path that exists is when it is not a regular file or a folder ("a character device",
    "a FIFO", ...), else None. Such a path is never replaced by an output file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _writable_dir(field: str, shown: Any, folder: Path) -> None:
    """``folder`` (or, where it does not exist yet, its nearest existing parent) is a folder this
    process may create files in: not a file, not on a read-only file system, not another user's."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise OptionError(field, shown, f"a path whose folders can be created, but {base} is not a folder")
    why = ""
    if not os.access(base, os.W_OK | os.X_OK):
        why = "on a read-only file system" if _read_only(base) else "not writable by this user"
    else:  # permissions say yes (root always hears yes): try it, as the output will
        import tempfile

        try:
            fd, probe = tempfile.mkstemp(prefix=".explorer-probe.", dir=base)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            why = f"not writable ({err.strerror or err})"
    if why:
        raise OptionError(field, shown, f"a place this user can write, but {base} is {why}")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_output_file(field: str, value: Any) -> Path:
    """An output file path that can be written before any work is done: a regular file or a new
    path in a folder this process can write (missing folders can be made). A device, FIFO or socket
    is refused (an output is written beside and renamed, which would replace it), as is a folder."""
    check_text(field, value if not isinstance(value, Path) else str(value))
    path = Path(value).expanduser()
    kind = special_kind(path)
    if kind is not None:
        raise OptionError(field, str(value), f"a regular file path; {path} is {kind}, which an output never replaces")
    if path.is_dir():
        raise OptionError(field, str(value), "a file path, but that path is a folder")
    _writable_dir(field, str(value), path.parent)
    return path


def check_output_folder(field: str, value: Any) -> Path:
    """An output folder that exists or can be made, and this process can write into (nothing is made)."""
    check_text(field, value if not isinstance(value, Path) else str(value))
    path = Path(value).expanduser()
    if os.path.lexists(path) and not path.is_dir():
        kind = special_kind(path)
        raise OptionError(field, str(value), f"a folder, but that path is {kind or 'a file'}")
    _writable_dir(field, str(value), path)
    return path
