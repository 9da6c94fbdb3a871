"""Structured (typed) configs of the Hydra commands and the glue that feeds them spaces.

Hydra checks command-line values against these dataclasses (``measure.threads=abc`` fails with
Hydra's own message, before any work). The ``measure`` section mirrors
:class:`explorer.measure.settings.MeasureSettings` field by field, every field optional: ``None``
means "not set here", so a value falls back to the space's ``measure:`` section and then to
MeasureSettings' default.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from omegaconf import OmegaConf

from explorer.data.space import list_spaces

__all__ = ["hydra_node", "MeasureOverrides", "SpaceAppConfig", "SweepAppConfig", "SearchAppConfig", "register_schemas",
           "register_spaces", "prepare_argv", "measure_overrides", "options_of", "run_hydra_command", "hydra_command", "SPACE_FILES",
           "BROKEN_SPACES"]

#: name -> file of every space registered in the `space` group by this process (for messages).
SPACE_FILES: dict[str, Path] = {}
#: name -> error of space files that could not be read (reported when chosen).
BROKEN_SPACES: dict[str, str] = {}

_NODES: dict[type, type] = {}


def hydra_node(cls: type) -> type:
    """The Hydra/OmegaConf node of a frozen options dataclass: the same fields, types and defaults,
    mutable (Hydra writes command-line overrides into it) and without validation. The frozen class
    stays the one declaration; :func:`options_of` turns a composed node back into it."""
    if cls not in _NODES:
        hints = typing.get_type_hints(cls)
        specs = []
        for f in dataclasses.fields(cls):
            tp = hints.get(f.name, Any)
            if typing.get_origin(tp) in (tuple, dict, list) or tp is tuple:
                tp = Any
            if f.default_factory is not dataclasses.MISSING:
                specs.append((f.name, tp, field(default_factory=f.default_factory)))
            else:
                specs.append((f.name, tp, field(default=f.default if f.default is not dataclasses.MISSING else None)))
        _NODES[cls] = dataclasses.make_dataclass(f"{cls.__name__}Node", specs)
    return _NODES[cls]


def options_of(cls: type, node: Any) -> Any:
    """The validated frozen ``cls`` from a composed config section (unknown keys refused by name)."""
    from explorer.engine.options import options_from

    values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    return options_from(cls, values)  # type: ignore[arg-type]


def _measure_overrides_class() -> type:
    """A node with MeasureSettings' fields, each Optional and defaulting to None (None: not set here,
    so the space's ``measure:`` section and then MeasureSettings' default apply)."""
    from explorer.measure.settings import MeasureSettings

    hints = typing.get_type_hints(MeasureSettings)
    specs = []
    for f in dataclasses.fields(MeasureSettings):
        tp = hints.get(f.name, Any)
        opt = tp if typing.get_origin(tp) is Union else Optional[tp]  # type: ignore[valid-type]
        specs.append((f.name, opt, field(default=None)))
    return dataclasses.make_dataclass("MeasureOverrides", specs)


MeasureOverrides = _measure_overrides_class()


@dataclass
class AccuracyOptions:
    """``accuracy.*``: where rows without a trained accuracy take one from (explorer.data.reference)."""

    metric: Optional[str] = "avg5"  # published metric joined on default-knob rows; null = none
    csv: Optional[str] = None  # a user's accuracy CSV (same long format as results/reference/)


@dataclass
class SpaceAppConfig:
    """What every command over a space shares: the space, where results go, how to measure."""

    space: Any = None  # filled by +space=NAME (validated by explorer.data.space.load_space)
    measure: Any = field(default_factory=MeasureOverrides)
    out: Optional[str] = None  # results folder; default results/<space name>
    store: Optional[str] = None  # SQLAlchemy URL; default sqlite:///<out>/store.db
    device: Optional[str] = None  # shortcut for measure.device
    spaces_dir: Optional[str] = None  # an extra folder of NAME.yaml spaces for +space=NAME
    space_file: Optional[str] = None  # a space YAML file anywhere (instead of +space=NAME)


def _sweep_app() -> type:
    from explorer.engine.options import SweepOptions

    @dataclass
    class SweepAppConfig(SpaceAppConfig):
        """The whole config of ``explorer sweep``."""

        sweep: Any = field(default_factory=hydra_node(SweepOptions))
        accuracy: AccuracyOptions = field(default_factory=AccuracyOptions)
        report: bool = True  # write <out>/pareto.html at the end

    return SweepAppConfig


def _search_app() -> type:
    from explorer.engine.options import SearchOptions, SweepOptions

    @dataclass
    class SearchAppConfig(SpaceAppConfig):
        """The whole config of ``explorer search`` (``sweep.*``: how each proposed point is measured)."""

        search: Any = field(default_factory=hydra_node(SearchOptions))
        sweep: Any = field(default_factory=hydra_node(SweepOptions))

    return SearchAppConfig


SweepAppConfig = _sweep_app()
SearchAppConfig = _search_app()


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore (named in the commands' YAML defaults)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="sweep_schema", node=SweepAppConfig)
    cs.store(name="search_schema", node=SearchAppConfig)


def register_spaces(extra_dirs: Iterable[Union[str, Path]] = (), files: Iterable[Union[str, Path]] = ()) -> dict[str, Path]:
    """Register every ``NAME.yaml`` of the space folders (and ``files``) as ``space/NAME``.

    Folders: ``extra_dirs`` (``spaces_dir=``), ``$EXPLORER_SPACES_DIR``, ``./search_spaces`` and
    the checkout's ``search_spaces/`` (first match wins). This is what makes ``+space=NAME``
    work from any working directory without a search-path plugin.
    """
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    cs = ConfigStore.instance()
    found = dict(list_spaces(extra_dirs))
    for f in files:
        path = Path(f).expanduser()
        found[path.stem] = path
    for name, path in found.items():
        try:
            node = OmegaConf.load(path)
        except Exception as err:  # reported only if this space is chosen
            BROKEN_SPACES[name] = f"{path}: not valid YAML ({err})"
            continue
        if not isinstance(node, dict) and not OmegaConf.is_dict(node):
            BROKEN_SPACES[name] = f"{path}: a space file must be a mapping (see search_spaces/*.yaml)"
            continue
        cs.store(group="space", name=name, node=node)
        SPACE_FILES[name] = path.resolve()
        BROKEN_SPACES.pop(name, None)
    return found


def _value(arg: str, key: str) -> Optional[str]:
    for prefix in (f"{key}=", f"+{key}=", f"++{key}="):
        if arg.startswith(prefix):
            return arg[len(prefix):]
    return None


def prepare_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Make spaces available and normalise arguments before Hydra parses them.

    Returns (argv for Hydra, chosen space names). ``space=NAME`` becomes ``+space=NAME`` (the
    group has no default); ``spaces_dir=`` and ``space_file=`` register extra spaces;
    ``space_file=`` alone also selects its space.
    """
    dirs = [v for a in argv if (v := _value(a, "spaces_dir")) not in (None, "", "null")]
    files = [v for a in argv if (v := _value(a, "space_file")) not in (None, "", "null")]
    register_spaces([d for v in dirs for d in v.split(",")], [f for v in files for f in v.split(",")])
    out: list[str] = []
    chosen: list[str] = []
    for a in argv:
        if a.startswith("space="):
            a = "+" + a
        v = _value(a, "space")
        if v is not None and a.startswith("+space="):
            chosen += [n.strip() for n in v.split(",") if n.strip()]
        out.append(a)
    if files and not chosen:
        names = [Path(f).stem for v in files for f in v.split(",")]
        out.append("+space=" + ",".join(names))
        chosen = names
    return out, chosen


def measure_overrides(cfg: Any) -> dict[str, Any]:
    """The measure settings set on the command line / config (non-null), plus ``device=``."""
    from omegaconf import OmegaConf

    node = cfg.get("measure") if cfg is not None else None
    values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    values = {k: v for k, v in dict(values or {}).items() if v is not None}
    device = cfg.get("device") if cfg is not None else None
    if device is not None:
        if "device" in values and values["device"] != device:
            raise ValueError(f"device={device!r} and measure.device={values['device']!r} disagree; give one")
        values["device"] = device
    return values


def run_hydra_command(prog: str, hydra_main: Any, argv: list[str], state: dict[str, Any], *,
                      spaces: bool = True) -> int:
    """Run one of explorer's ``@hydra.main`` apps on ``argv`` as ``python -m explorer <prog>``.

    Shared by the sweep, search and train commands: spaces are registered and ``argv``
    normalised first (:func:`prepare_argv`; ``spaces=False`` for commands without a space group), a broken space file is reported without a traceback,
    and Hydra's own exits (``--help``, unknown keys) become return codes. ``state["exit"]`` is the
    code the app's body set; ``state["argv"]`` keeps the user's words for "resume with" messages.
    """
    import sys

    if spaces:
        args, chosen = prepare_argv(list(argv))
    else:  # `space=NAME` is a plain option there, not the group an earlier command may have registered
        from hydra.core.config_store import ConfigStore

        ConfigStore.instance().repo.pop("space", None)
        args, chosen = list(argv), []
    for name in chosen:
        if name in BROKEN_SPACES:
            sys.stderr.write(f"error: {BROKEN_SPACES[name]}\n")
            sys.stderr.flush()
            return 2
    state["exit"] = 0
    state["argv"] = list(argv)
    saved = sys.argv
    sys.argv = [f"python -m explorer {prog}", *args]
    try:
        hydra_main()
    except SystemExit as exc:  # Hydra exits on its own errors (unknown key, bad type, --help)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code if code else int(state["exit"])
    finally:
        sys.argv = saved
    return int(state["exit"])


def hydra_command(prog: str, run: Any, state: dict[str, Any], *, config_name: Optional[str] = None,
                  schema: Any = None, spaces: bool = True) -> Any:
    """The ``main(argv) -> int`` of a command: ``run(cfg) -> exit code`` as a Hydra app on
    ``pkg://explorer.conf/<config_name>.yaml`` (default ``prog``), with ``schema()`` stored as
    ``<config_name>_schema`` (the space commands' schemas come from :func:`register_schemas`).
    Ctrl-C gives 130; under ``--multirun`` the worst exit code of the jobs is returned."""
    import hydra

    name = config_name or prog

    @hydra.main(version_base="1.3", config_path="pkg://explorer.conf", config_name=name)
    def app(cfg: Any) -> None:
        try:
            code = run(cfg)
        except KeyboardInterrupt:
            code = 130
        state["exit"] = max(int(state["exit"]), int(code))

    def main(argv: list[str]) -> int:
        from hydra.core.config_store import ConfigStore

        register_schemas()
        if schema is not None:
            ConfigStore.instance().store(name=f"{name}_schema", node=schema())
        return run_hydra_command(prog, app, argv, state, spaces=spaces)

    main.__doc__ = f"Entry point of ``explorer {prog}`` (key=value options, ``--help``; a Hydra app)."
    return main
