"""What the commands share: error lines, the chosen space, where results go.

Every command prints ``error: ...`` (no traceback) and returns 2 for bad input; these helpers
keep that the same everywhere.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from explorer.conf.schema import BROKEN_SPACES, SPACE_FILES, measure_overrides

__all__ = ["error", "space_source", "chosen_space", "space_and_settings", "writable_folder", "results_location"]


def error(text: str) -> None:
    """Print ``error: text`` on stderr, as one line (a text of several lines, such as every problem
    of a space, is joined with "; ")."""
    text = "; ".join(line.strip() for line in str(text).splitlines() if line.strip())
    sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()


def space_source(cfg: Any) -> tuple[Optional[str], str]:
    """(chosen space name, text naming where it came from) for messages."""
    from hydra.core.hydra_config import HydraConfig

    choice: Optional[str] = None
    overridden = False
    try:
        hc = HydraConfig.get()
        choice = hc.runtime.choices.get("space")
        overridden = any(o.lstrip("+~").startswith("space.") for o in hc.overrides.task)
    except Exception:  # composed outside Hydra's app (tests)
        pass
    path = SPACE_FILES.get(choice) if choice else None
    if path is not None:
        try:
            text = str(path.relative_to(Path.cwd()))
        except ValueError:
            text = str(path)
    else:
        text = f"space {choice!r}" if choice else "space"
    if overridden:
        text += " (with command-line overrides)"
    return choice, text


def chosen_space(cfg: Any, what: str = "") -> Optional[tuple[Optional[str], str, Any]]:
    """(space name, where it came from, its config node), or None after printing why there is none."""
    from explorer.data.space import list_spaces

    choice, source = space_source(cfg)
    if choice in BROKEN_SPACES:
        error(BROKEN_SPACES[choice])
        return None
    node = cfg.get("space")
    names = ", ".join(sorted(list_spaces([cfg.spaces_dir] if cfg.get("spaces_dir") else [])))
    if node is None:
        error(f"no search space chosen{what}: add +space=NAME (one of: {names}) or space_file=PATH")
        return None
    if not OmegaConf.is_dict(node):
        error(f"invalid space={node!r}: not a known space; one of: {names} (or space_file=PATH)")
        return None
    return choice, source, node


def space_and_settings(cfg: Any) -> Optional[tuple[Any, Any, str]]:
    """(Space, MeasureSettings, where the space came from) of a composed config, or None after
    printing what is wrong (a bad space lists every problem; a bad setting names its field)."""
    from explorer.data.space import SpaceError, load_space
    from explorer.engine.sweep import default_settings

    chosen = chosen_space(cfg)
    if chosen is None:
        return None
    choice, source, node = chosen
    try:
        space = load_space(node, name=None if node.get("name") else choice, source_name=source)
        settings = default_settings(space, **measure_overrides(cfg))
    except SpaceError as err:
        error(f"invalid search space: {err}")
        return None
    except ValueError as err:
        error(str(err))
        return None
    return space, settings, source


def writable_folder(field: str, path: Path) -> Path:
    """``path`` as a folder this process can write into (made if missing), else OptionError."""
    from explorer.checks import OptionError, check_output_folder

    check_output_folder(field, path)  # a file, a special file, a read-only or foreign place: refused
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OptionError(field, str(path), f"a folder that can be created ({err.strerror or err})") from None
    return path


def results_location(cfg: Any, space_name: str, *, create: bool = True) -> tuple[Path, str]:
    """(results folder, store URL) from ``out=`` and ``store=`` (default results/<space>/store.db).

    ``store=`` must be a URL (a folder goes to ``out=``); with ``create`` the folder is made and
    checked writable before any work, so a bad path fails in milliseconds, not after a sweep.
    """
    from explorer.checks import OptionError
    from explorer.data.store import resolve_url

    out = Path(cfg.out) if cfg.get("out") else Path("results") / space_name
    store = cfg.get("store")
    if store is not None and (not isinstance(store, str) or "://" not in store):
        raise OptionError("store", store, "a database URL such as sqlite:///path/store.db or "
                          "postgresql://user@host/db (a results folder goes to out=)")
    if create:
        writable_folder("out", out)
    return out, (store or resolve_url(out))
