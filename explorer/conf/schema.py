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

__all__ = ["hydra_node", "MeasureOverrides", "SpaceAppConfig", "space_app_config", "SweepAppConfig", "SearchAppConfig",
           "register_schemas",
           "register_spaces", "prepare_argv", "measure_overrides", "enter_body", "hydra_error_line", "unknown_override", "options_of", "run_hydra_command", "hydra_command", "SPACE_FILES",
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

    space: Any = None  # filled by +space=NAME (validated by explorer.data.space.load_space); any mapping
    measure: MeasureOverrides = field(default_factory=MeasureOverrides)  # type: ignore[valid-type]
    out: Optional[str] = None  # results folder; default results/<space name>
    store: Optional[str] = None  # SQLAlchemy URL; default sqlite:///<out>/store.db
    device: Optional[str] = None  # shortcut for measure.device
    spaces_dir: Optional[str] = None  # an extra folder of NAME.yaml spaces for +space=NAME
    space_file: Optional[str] = None  # a space YAML file anywhere (instead of +space=NAME)


def space_app_config(name: str, doc: str, sections: dict[str, type],
                     extra: Iterable[tuple[str, type, Any]] = ()) -> type:
    """The whole config of a command over a space: :class:`SpaceAppConfig`, one section per frozen
    options class (``{"sweep": SweepOptions}``: the section ``sweep``, typed with its Hydra node
    :func:`hydra_node`), then ``extra`` fields as ``(name, type, dataclasses.field(...))``. The one
    factory behind ``SweepAppConfig``, ``SearchAppConfig`` and the worker's and train's configs."""
    specs: list[tuple[str, type, Any]] = [(section, hydra_node(cls), field(default_factory=hydra_node(cls)))
                                          for section, cls in sections.items()]
    cls = dataclasses.make_dataclass(name, [*specs, *extra], bases=(SpaceAppConfig,))
    cls.__doc__ = doc
    cls.__module__ = __name__
    return cls


def _app_configs() -> tuple[type, type]:
    from explorer.engine.options import SearchOptions, SweepOptions

    sweep = space_app_config("SweepAppConfig", "The whole config of ``explorer sweep`` (``report``: write "
                             "<out>/pareto.html at the end).", {"sweep": SweepOptions},
                             extra=[("accuracy", AccuracyOptions, field(default_factory=AccuracyOptions)),
                                    ("report", bool, field(default=True))])
    search = space_app_config("SearchAppConfig", "The whole config of ``explorer search`` (``sweep.*``: how each "
                              "proposed point is measured).", {"search": SearchOptions, "sweep": SweepOptions})
    return sweep, search


SweepAppConfig, SearchAppConfig = _app_configs()


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
        if not path.is_file():
            BROKEN_SPACES[path.stem] = (f"invalid space_file={str(f)!r}: "
                                        f"{'a folder, not a file' if path.is_dir() else 'no such file'}")
            continue
        found[path.stem] = path
    for name, path in found.items():
        try:
            node = OmegaConf.load(path)
        except Exception as err:  # reported only if this space is chosen
            BROKEN_SPACES[name] = f"{path}: not valid YAML ({' '.join(str(err).split())})"
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
            value = arg[len(prefix):]
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            return value
    return None


def quote_for_hydra(arg: str) -> str:
    """``key=value`` with a non-ASCII plain value quoted, so Hydra's lexer (ASCII only outside quotes)
    reads a path such as ``out=/data/résultats`` as the user meant it."""
    if "=" not in arg or arg.isascii() or arg.startswith("-"):
        return arg
    key, value = arg.split("=", 1)
    if not value or value[0] in "'\"[{":
        return arg

    def quoted(item: str) -> str:
        if item.isascii():
            return item
        return "'" + item.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return f"{key}=" + ",".join(quoted(v) for v in value.split(","))  # a,b: Hydra's sweep over a and b


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
        a = quote_for_hydra(a)
        v = _value(a, "space")
        if v is not None and a.startswith("+space="):
            chosen += [n.strip() for n in v.split(",") if n.strip()]
        out.append(a)
    if files and not chosen:
        names = [Path(f).stem for v in files for f in v.split(",")]
        out.append(quote_for_hydra("+space=" + ",".join(names)))
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


class _HeldStderr:
    """Holds what is written to stderr until the app's body starts (what Hydra writes before that is
    its own error about the command line, reworded by :func:`hydra_error_line`); passes the rest on."""

    def __init__(self, real: Any):
        self.real = real
        self.held: list[str] = []
        self.passing = False

    def write(self, text: str) -> int:
        if self.passing:
            return self.real.write(text)
        self.held.append(text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def release(self) -> None:
        if not self.passing:
            self.passing = True
            self.real.write("".join(self.held))
            self.held.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


_CONVERSIONS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def hydra_error_line(text: str, prog: str, argv: list[str]) -> str:
    """One ``error:`` line (without the prefix) for what Hydra printed about a bad command line."""
    import re

    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Set the environment")]
    body = " ".join(lines)
    full_key = re.search(r"full_key: (\S+)", body)
    if m := re.search(r"Could not find '(\w+)/([^']*)'", body):
        group, name = m.groups()
        options = re.findall(r"^\t(\S+)$", text, re.M)
        known = ", ".join(options) if options else "see --help"
        extra = " (or space_file=PATH, spaces_dir=DIR)" if group == "space" else ""
        return f"invalid {group}={name!r}: not a known {group}; one of: {known}{extra}"
    if m := re.search(r"Could not override '([^']+)'", body):
        key = m.group(1)
        value = next((a.split("=", 1)[1] for a in argv if a.lstrip("+~").split("=", 1)[0] == key and "=" in a), "")
        return f"invalid {key}={value!r}: no such option of `explorer {prog}` (its options: explorer {prog} --help)"
    if m := re.search(r"Error merging override (\S+?)=(.*?) (Value|Invalid|Error)", body):
        key, value = m.group(1).lstrip("+~"), m.group(2)
        if c := re.search(r"could not be converted to (\w+)", body):
            allowed = _CONVERSIONS.get(c.group(1), c.group(1))
        elif "not a valid bool" in body:
            allowed = "true or false"
        elif c := re.search(r"Invalid value '[^']*', expected one of \[([^\]]*)\]", body):
            allowed = f"one of {c.group(1)}"
        else:
            allowed = lines[1] if len(lines) > 1 else "a value of the option's type"
        return f"invalid {full_key.group(1) if full_key else key}={value!r}: {allowed}"
    if "LexerNoViableAlt" in body or "mismatched input" in body or "no viable alternative" in body \
            or "token recognition error" in body:
        bad = _unparsable(argv)
        hint = (f"; put the value in quotes for Hydra, e.g. '{bad.split('=', 1)[0]}=\"{bad.split('=', 1)[1]}\"'"
                if bad and "=" in bad else "; quote values with spaces, brackets or non-ASCII characters")
        return f"cannot read the command-line argument {bad!r}" + (f" ({lines[-1]})" if lines else "") + hint
    return body or f"explorer {prog}: Hydra refused the command line"


def _unparsable(argv: list[str]) -> Optional[str]:
    """The first argument Hydra's override parser cannot read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for a in argv:
        if a.startswith("-"):
            continue
        try:
            parser.parse_override(a)
        except Exception:  # noqa: BLE001 - Hydra's OverrideParseException and friends
            return a
    return None


def _schema_node(prog: str) -> Any:
    from hydra.core.config_store import ConfigStore

    try:
        return ConfigStore.instance().load(f"{prog}_schema.yaml").node
    except Exception:  # noqa: BLE001 - no schema stored under that name: nothing to compare with
        return None


def unknown_override(schema: Any, overrides: Iterable[str]) -> Optional[str]:
    """The first ``+key=value`` override that adds a key the command's schema does not have (Hydra's
    ``+`` appends silently), as the error text; None when all are known. Keys under ``space`` (a
    space file's own sections) and ``hydra`` are left to their own checks."""
    if schema is None:
        return None
    for o in overrides:
        if not o.startswith("+") or "=" not in o:
            continue
        key, value = o.lstrip("+").split("=", 1)
        parts = key.split(".")
        if parts[0] in ("space", "hydra"):
            continue
        node = schema
        for i, part in enumerate(parts):
            if not OmegaConf.is_dict(node) or not dataclasses.is_dataclass(OmegaConf.get_type(node)):
                break  # a free-form value or mapping (Any, train.config): its own checks judge it
            if part not in node:
                return (f"invalid {key}={value!r}: no such option"
                        + (f" in {'.'.join(parts[:i])}" if i else "") + "; see --help for the options")
            node = node._get_node(part)
    return None


def enter_body(state: dict[str, Any], prog: str) -> Optional[int]:
    """Called first in an app's body: from here on stderr passes through; refuses a ``+key=value``
    the schema lacks (returns 2 after printing it) and returns None otherwise."""
    held = state.get("held")
    if held is not None:
        held.release()
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - composed outside Hydra's app (tests)
        return None
    text = unknown_override(_schema_node(prog), overrides)
    if text is not None:
        import sys

        sys.stderr.write(f"error: {text}\n")
        sys.stderr.flush()
        return 2
    return None


def run_hydra_command(prog: str, hydra_main: Any, argv: list[str], state: dict[str, Any], *,
                      spaces: bool = True, schema_name: Optional[str] = None) -> int:
    """Run one of explorer's ``@hydra.main`` apps on ``argv`` as ``python -m explorer <prog>``.

    Shared by every command: spaces are registered and ``argv`` normalised first
    (:func:`prepare_argv`; ``spaces=False`` for commands without a space group), a broken space file
    is reported without a traceback, and Hydra's own errors about the command line (a bad type, an
    unknown key, an unknown space, an argument its lexer cannot read) become one ``error:`` line
    and exit 2 (``--help`` exits 0). ``state["exit"]`` is the code the app's body set;
    ``state["argv"]`` keeps the user's words for "resume with" messages.
    """
    import sys

    if spaces:
        from explorer.data.space import SpaceError

        try:
            args, chosen = prepare_argv(list(argv))
        except SpaceError as err:
            sys.stderr.write(f"error: {err}\n")
            sys.stderr.flush()
            return 2
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
    saved, saved_err = sys.argv, sys.stderr
    held = state["held"] = _HeldStderr(saved_err)
    sys.argv = [f"python -m explorer {prog}", *args]
    sys.stderr = held  # type: ignore[assignment]
    code: Optional[int] = None
    try:
        hydra_main()
    except SystemExit as exc:  # Hydra exits on its own errors (unknown key, bad type, --help)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv, sys.stderr = saved, saved_err
        state.pop("held", None)
    if not held.passing:  # the body never ran: what was written is Hydra's
        text = "".join(held.held)
        if code:
            saved_err.write(f"error: {hydra_error_line(text, prog, args)}\n")
            saved_err.flush()
            return 2
        saved_err.write(text)
    if code:
        return code
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
        refused = enter_body(state, name)
        if refused is not None:
            state["exit"] = max(int(state["exit"]), refused)
            return
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
