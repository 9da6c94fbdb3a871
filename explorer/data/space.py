"""Search spaces: the YAML schema, its validation and the design points it enumerates.

A space file names encoder families with grids of knob values, resolutions, LLMs and text
prompt lengths; the design points are the cartesian product of those lists, minus exclusions and
points that break the constraints. Everything is checked before any measurement starts so a
typo costs a second, not an hour of sweeping: errors name the file, the key, the value and what
is allowed, and are raised as :class:`SpaceError`.

Schema (see ``search_spaces/*.yaml`` for worked examples)::

    name: my_space                # optional; defaults to the file's stem
    description: free text        # optional
    encoders:                     # a mapping label -> entry (overridable from the command line)
      fastvithd:                  #   the label is the family unless `family:` says otherwise
        knobs:                    #   each knob maps to a list of values (a scalar = one value);
          width_mult: [1.0, 0.5]  #   list-valued knobs take a list of lists: depths: [[2, 4, 8, 2, 2]]
        resolutions: [256, 512]   #   optional; falls back to the top-level `resolutions`
    resolutions: {start: 256, stop: 1024, step: 256}   # or a list; `stop` is inclusive
    llms: [qwen2-0.5b, path/to/config.json]
    text_tokens: [32]
    constraints: {max_visual_tokens: 256, max_params_m: 200}
    exclude:                      # partial points; a point matching every given key is dropped
      - {encoder: fastvithd, width_mult: 0.5, resolution: 256}
      - {llm: qwen2-7b, pruning: {after_layer: 2, ratio: 0.5}}   # `pruning: null`: the unpruned points
    pruning:                      # optional axis: visual tokens dropped inside the LLM (FastV-style);
      - null                      #   null = no pruning (the default when the key is absent)
      - {after_layer: 2, ratio: 0.5}
    measure: {max_time_s: 2.0}    # optional MeasureSettings defaults for this space

``encoders`` may also be a list of entries, each with ``family`` (or ``name``), ``knobs`` and
``resolutions``.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

from explorer.checks import OptionError, Problems, is_int, is_number

if TYPE_CHECKING:  # the measurement layer imports torch; a Pruning is built on first use
    from explorer.measure.pruned_prefill import Pruning

__all__ = [
    "Constraints",
    "DesignPoint",
    "EncoderEntry",
    "EncoderShape",
    "Space",
    "SpaceError",
    "as_pruning",
    "canonical_json",
    "digest",
    "encoder_shape",
    "enumerate_points",
    "find_space_file",
    "list_spaces",
    "load_space",
    "spaces_dirs",
]

POINT_FIELDS = ("encoder", "resolution", "llm", "text_tokens")
SPACE_KEYS = ("name", "description", "encoders", "resolutions", "llms", "text_tokens", "constraints",
              "exclude", "measure", "pruning")
ENTRY_KEYS = ("family", "name", "knobs", "resolutions")


class SpaceError(ValueError):
    """A search space that cannot be swept; ``errors`` lists every problem found, one per line."""

    def __init__(self, errors: Union[str, Sequence[str]]):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


# --------------------------------------------------------------------------------------------
# Canonical JSON and digests: the keys every table uses.


def _canonical(value: Any) -> Any:
    """Plain JSON value with a single spelling: integral floats become ints, tuples lists."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite number {value!r} cannot be part of a key")
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON-serialisable")


def canonical_json(value: Any) -> str:
    """Sorted-key compact JSON with 1.0 and 1 spelled the same, so digests agree everywhere."""
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"))


def digest(value: Any, length: int = 16) -> str:
    """Short stable key: the first ``length`` hex digits of sha256 of the canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:length]


def freeze(value: Any) -> Any:
    """Hashable form of a knob value (lists become tuples, recursively)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    return value


def thaw(value: Any) -> Any:
    """JSON-like form of a frozen knob value (tuples back to lists)."""
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class DesignPoint:
    """One VLM configuration: encoder family + knobs at a resolution, an LLM and a prompt length,
    and optionally visual tokens pruned inside the LLM (``pruning``, a
    :class:`~explorer.measure.pruned_prefill.Pruning`; None: no pruning).

    Frozen and hashable; ``key`` is a digest of the canonical JSON, identical across runs and
    machines (it depends on nothing but these fields). ``pruning`` joins that JSON only when it is
    set, so a point without pruning keeps the key it always had.
    """

    encoder: str
    knobs: tuple[tuple[str, Any], ...]
    resolution: int
    llm: str
    text_tokens: int
    pruning: Optional["Pruning"] = None

    def __post_init__(self) -> None:
        if self.pruning is not None:  # make() and from_dict() turn a mapping into a Pruning
            from explorer.measure.pruned_prefill import Pruning

            if not isinstance(self.pruning, Pruning):
                raise OptionError("pruning", self.pruning, "None or a Pruning(after_layer, ratio) "
                                  "(DesignPoint.make takes the {after_layer, ratio} mapping)")

    @classmethod
    def make(cls, encoder: str, knobs: Optional[Mapping[str, Any]], resolution: int, llm: str,
             text_tokens: int, pruning: Any = None) -> "DesignPoint":
        """Build from a plain knob dict (sorted and frozen here); ``pruning``: None, a Pruning or
        its ``{after_layer, ratio}`` mapping."""
        frozen = tuple(sorted((str(k), freeze(v)) for k, v in (knobs or {}).items()))
        return cls(str(encoder), frozen, int(resolution), str(llm), int(text_tokens), as_pruning(pruning))

    def knob_dict(self) -> dict[str, Any]:
        return {k: thaw(v) for k, v in self.knobs}

    def to_dict(self) -> dict[str, Any]:
        out = {"encoder": self.encoder, "knobs": self.knob_dict(), "resolution": self.resolution,
               "llm": self.llm, "text_tokens": self.text_tokens}
        if self.pruning is not None:
            out["pruning"] = self.pruning.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DesignPoint":
        return cls.make(data["encoder"], data.get("knobs") or {}, data["resolution"], data["llm"],
                        data["text_tokens"], data.get("pruning"))

    @property
    def key(self) -> str:
        return digest(self.to_dict())

    def label(self) -> str:
        knobs = ",".join(f"{k}={thaw(v)}" for k, v in self.knobs)
        pruned = "" if self.pruning is None else f"/prune{self.pruning.after_layer}:{self.pruning.ratio:g}"
        return f"{self.encoder}[{knobs}]@{self.resolution}+{self.llm}/{self.text_tokens}t{pruned}"


def as_pruning(value: Any) -> Optional["Pruning"]:
    """None, a :class:`~explorer.measure.pruned_prefill.Pruning`, or its ``{after_layer, ratio}``
    mapping, as an Optional[Pruning] (a bad mapping raises the OptionError naming its field)."""
    if value is None:
        return None
    from explorer.measure.pruned_prefill import Pruning

    return value if isinstance(value, Pruning) else Pruning.from_dict(value)


@dataclass(frozen=True)
class EncoderEntry:
    """One encoder family of a space with its own knob grid and resolutions."""

    family: str
    knobs: tuple[tuple[str, tuple[Any, ...]], ...]  # knob -> candidate values, sorted by knob
    resolutions: tuple[int, ...]
    label: str = ""

    def knob_grid(self) -> list[dict[str, Any]]:
        """Every knob combination of this entry (cartesian product), as plain dicts."""
        names = [k for k, _ in self.knobs]
        return [dict(zip(names, combo)) for combo in itertools.product(*(vals for _, vals in self.knobs))]


@dataclass(frozen=True)
class Constraints:
    """Limits a design point must respect to be swept (None: no limit)."""

    max_visual_tokens: Optional[int] = None  # tokens the encoder hands the LLM
    max_params_m: Optional[float] = None  # encoder parameters, millions (training form)

    def active(self) -> bool:
        return self.max_visual_tokens is not None or self.max_params_m is not None


@dataclass(frozen=True)
class Space:
    """A validated search space (what :func:`load_space` returns)."""

    name: str
    encoders: tuple[EncoderEntry, ...]
    llms: tuple[str, ...]
    text_tokens: tuple[int, ...]
    constraints: Constraints = field(default_factory=Constraints)
    exclude: tuple[tuple[tuple[str, Any], ...], ...] = ()
    measure: tuple[tuple[str, Any], ...] = ()  # MeasureSettings defaults for this space
    description: str = ""
    source: Optional[str] = None  # the file it came from, for messages
    pruning: tuple[Optional["Pruning"], ...] = (None,)  # in-LLM pruning options (None: no pruning)

    def measure_defaults(self) -> dict[str, Any]:
        return {k: thaw(v) for k, v in self.measure}

    def exclusions(self) -> list[dict[str, Any]]:
        return [{k: (v.to_dict() if k == "pruning" and v is not None else thaw(v)) for k, v in ex} for ex in self.exclude]

    def product_size(self) -> int:
        """Points of the full product, before exclusions and constraints (arithmetic, no enumeration)."""
        per_llm = len(self.llms) * len(self.text_tokens) * len(self.pruning)
        return sum(math.prod(len(v) for _, v in e.knobs) * len(e.resolutions) * per_llm for e in self.encoders)


@dataclass(frozen=True)
class EncoderShape:
    """What planning needs to know about an encoder at a resolution without timing it."""

    out_channels: int
    visual_tokens: int
    params_m: float  # training (unfolded) form


# --------------------------------------------------------------------------------------------
# Encoder inspection on the meta device (no memory, no weights)


@functools.lru_cache(maxsize=256)
def _meta_encoder(family: str, frozen_knobs: tuple[tuple[str, Any], ...]) -> Any:
    from explorer.models.registry import build_encoder_meta

    return build_encoder_meta(family, **{k: thaw(v) for k, v in frozen_knobs})


def encoder_shape(family: str, knobs: Mapping[str, Any], resolution: int) -> EncoderShape:
    """Output channels, visual tokens and parameters, from a meta-device build (cached).

    Raises the builder's ``ValueError``/``TypeError`` for a bad knob or resolution.
    """
    enc = _meta_encoder(family, tuple(sorted((k, freeze(v)) for k, v in knobs.items())))
    return EncoderShape(out_channels=int(enc.out_channels), visual_tokens=int(enc.num_tokens(int(resolution))),
                        params_m=enc.num_params() / 1e6)


ShapeFn = Callable[[str, Mapping[str, Any], int], EncoderShape]


# --------------------------------------------------------------------------------------------
# Where named spaces live


def _repo_spaces_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "search_spaces"


def spaces_dirs(extra: Iterable[Union[str, Path]] = ()) -> list[Path]:
    """Folders searched for ``NAME.yaml``, first match wins.

    Order: ``extra`` (e.g. ``spaces_dir=`` on the command line), ``$EXPLORER_SPACES_DIR``
    (``os.pathsep``-separated), ``./search_spaces`` and the checkout's ``search_spaces/``.
    """
    named = [("spaces_dir", Path(p).expanduser()) for p in extra]
    env = os.environ.get("EXPLORER_SPACES_DIR")
    if env:
        named += [("EXPLORER_SPACES_DIR", Path(p).expanduser()) for p in env.split(os.pathsep) if p]
    for field, d in named:  # a folder the user named must be one
        if not d.is_dir():
            raise SpaceError(f"invalid {field}={str(d)!r}: "
                             f"{'a file, not a folder of NAME.yaml spaces' if d.exists() else 'no such folder'}")
    dirs = [d for _, d in named] + [Path.cwd() / "search_spaces", _repo_spaces_dir()]
    seen: list[Path] = []
    for d in dirs:
        d = d.resolve()
        if d not in seen and d.is_dir():
            seen.append(d)
    return seen


def list_spaces(extra: Iterable[Union[str, Path]] = ()) -> dict[str, Path]:
    """Every named space found in :func:`spaces_dirs`: name -> file."""
    found: dict[str, Path] = {}
    for d in spaces_dirs(extra):
        for path in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
            found.setdefault(path.stem, path)
    return found


def find_space_file(name: str, extra: Iterable[Union[str, Path]] = ()) -> Path:
    spaces = list_spaces(extra)
    if name not in spaces:
        raise SpaceError(f"unknown space {name!r}; known spaces: {', '.join(sorted(spaces)) or '(none)'} "
                         f"(searched {', '.join(str(d) for d in spaces_dirs(extra))})")
    return spaces[name]


# --------------------------------------------------------------------------------------------
# Loading and validation


def _to_plain(data: Any) -> Any:
    """DictConfig/ListConfig -> dicts/lists (interpolations resolved); plain data unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return data
    if isinstance(data, (DictConfig, ListConfig)):
        return OmegaConf.to_container(data, resolve=True)
    return data


def _raise_if_any(chk: Problems) -> None:
    if chk:
        raise SpaceError(chk.lines)


def _resolutions(chk: Problems, key: str, raw: Any) -> tuple[int, ...]:
    allowed = "a positive integer, a list of them, or {start, stop, step} (stop inclusive)"
    if raw is None:
        chk.add(key, raw, f"missing; give {allowed}")
        return ()
    if is_int(raw):
        raw = [raw]
    if isinstance(raw, Mapping):
        unknown = sorted(set(raw) - {"start", "stop", "step"})
        if unknown:
            chk.add(key, raw, f"unknown key(s) {unknown}; allowed: start, stop, step")
            return ()
        start, stop, step = raw.get("start"), raw.get("stop"), raw.get("step", 1)
        for name, v in (("start", start), ("stop", stop), ("step", step)):
            if not (is_int(v) and v > 0):
                chk.add(f"{key}.{name}", v, "a positive integer")
                return ()
        if stop < start:
            chk.add(f"{key}.stop", stop, f"must be >= start={start}")
            return ()
        return tuple(range(start, stop + 1, step))
    if not isinstance(raw, (list, tuple)):
        chk.add(key, raw, allowed)
        return ()
    if not raw:
        chk.add(key, raw, "empty list; give at least one resolution")
    out: list[int] = []
    for i, v in enumerate(raw):
        if is_int(v) and v > 0:
            if v not in out:
                out.append(v)
        else:
            chk.add(f"{key}[{i}]", v, "a positive integer number of pixels")
    return tuple(out)


def _knob_grid(chk: Problems, key: str, raw: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        chk.add(key, raw, "a mapping knob -> list of values")
        return ()
    grid = []
    for name in sorted(raw):
        values = raw[name]
        if not isinstance(values, (list, tuple)):
            values = [values]
        if not values:
            chk.add(f"{key}.{name}", values, "empty list; give at least one value")
            continue
        frozen: list[Any] = []
        for v in values:
            fv = freeze(v)
            if fv not in frozen:
                frozen.append(fv)
        grid.append((str(name), tuple(frozen)))
    return tuple(grid)


def _encoder_entries(chk: Problems, raw: Any, default_res: Any) -> tuple[EncoderEntry, ...]:
    if raw is None:
        chk.add("encoders", raw, "missing; give a mapping label -> {family, knobs, resolutions}")
        return ()
    items: list[tuple[str, str, Any]] = []  # (key for messages, label, entry)
    if isinstance(raw, Mapping):
        items = [(f"encoders.{label}", str(label), entry) for label, entry in raw.items()]
    elif isinstance(raw, (list, tuple)):
        items = [(f"encoders[{i}]", "", entry) for i, entry in enumerate(raw)]
    else:
        chk.add("encoders", raw, "a mapping label -> entry, or a list of entries")
        return ()
    if not items:
        chk.add("encoders", raw, "empty; give at least one encoder family")
    entries: list[EncoderEntry] = []
    for key, label, entry in items:
        if entry is None:
            entry = {}
        if isinstance(entry, str) and not label:
            entry = {"family": entry}
        if not isinstance(entry, Mapping):
            chk.add(key, entry, f"a mapping with keys {', '.join(ENTRY_KEYS)}")
            continue
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            chk.add(f"{key}.{unknown[0]}", entry[unknown[0]],
                      f"unknown key; allowed: {', '.join(ENTRY_KEYS)} (knobs go under `knobs:`)")
            continue
        family = entry.get("family") or entry.get("name") or label
        if not family or not isinstance(family, str):
            chk.add(f"{key}.family", family, "the encoder family name (see `python -m explorer encoders`)")
            continue
        res_raw = entry.get("resolutions", None)
        res_key = f"{key}.resolutions"
        if res_raw is None:
            res_raw, res_key = default_res, "resolutions"
        resolutions = _resolutions(chk, res_key, res_raw)
        knobs = _knob_grid(chk, f"{key}.knobs", entry.get("knobs"))
        entries.append(EncoderEntry(family=family, knobs=knobs, resolutions=resolutions, label=label or family))
    return tuple(entries)


def _check_models(chk: Problems, space: Space, shape_fn: Optional[ShapeFn]) -> None:
    """Build every knob combination on the meta device: bad families, knobs and resolutions."""
    try:
        from explorer.models import list_encoders
        from explorer.models.registry import encoder_builder
    except Exception as err:  # pragma: no cover - broken install
        chk.note(f"cannot import the encoder zoo ({err})")
        return
    known = list_encoders()
    shape = shape_fn or encoder_shape
    for i, entry in enumerate(space.encoders):
        key = f"encoders.{entry.label}"
        if shape_fn is None and entry.family not in known:
            chk.add(f"{key}.family", entry.family, f"unknown encoder; known: {', '.join(known)}")
            continue
        builder = encoder_builder(entry.family)
        allowed = _builder_knobs(builder)
        if allowed is not None:
            bad = [k for k, _ in entry.knobs if k not in allowed]
            for k in bad:
                chk.add(f"{key}.knobs.{k}", dict(entry.knobs)[k][0] if dict(entry.knobs)[k] else None,
                          f"unknown knob for {entry.family}; allowed: {', '.join(sorted(allowed))}")
            if bad:
                continue
        ok_combo = None
        for combo in _each_value_once(entry):
            try:
                shape(entry.family, combo, entry.resolutions[0] if entry.resolutions else 256)
                ok_combo = combo
            except (ValueError, TypeError) as err:
                named = err.field if isinstance(err, OptionError) else None
                culprit = named if named in combo else _culprit(str(err), combo)
                if culprit is not None:
                    values = dict(entry.knobs)[culprit]
                    idx = values.index(freeze(combo[culprit])) if freeze(combo[culprit]) in values else 0
                    chk.add(f"{key}.knobs.{culprit}[{idx}]", thaw(combo[culprit]), str(err))
                else:
                    chk.add(f"{key}.knobs", combo, str(err))
                break  # one message per entry: the first bad combination says it
        if ok_combo is None:
            continue
        for j, res in enumerate(entry.resolutions):
            try:
                shape(entry.family, ok_combo, res)
            except (ValueError, TypeError) as err:
                chk.add(f"{key}.resolutions[{j}]", res, str(err))


def _each_value_once(entry: EncoderEntry) -> Iterator[dict[str, Any]]:
    """Knob combinations that try every listed value at least once: the first value of each knob,
    then each other value with the rest at their first. Linear in the values, where the product can
    be astronomically large; a combination that fails only jointly is caught when it is planned."""
    first = {k: vals[0] for k, vals in entry.knobs if vals}
    if len(first) < len(entry.knobs):
        return
    yield dict(first)
    for k, vals in entry.knobs:
        for v in vals[1:]:
            yield {**first, k: v}


def _builder_knobs(builder: Any) -> Optional[set[str]]:
    """Knob names a builder accepts, from its signature (None when it takes **kwargs)."""
    if builder is None:
        return None
    import inspect

    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _culprit(message: str, combo: Mapping[str, Any]) -> Optional[str]:
    """The knob an error that is not an :class:`~explorer.checks.OptionError` names (``invalid
    NAME=...`` or ``'NAME'``: a ``TypeError`` of a builder taking ``**kwargs``, transformers' own
    checks), if it is one of the combo's. An OptionError says its field itself."""
    for name in sorted(combo, key=len, reverse=True):
        if f"invalid {name}=" in message or f"'{name}'" in message:
            return name
    return None


def _check_llms(chk: Problems, llms: Sequence[str], pruning: Sequence[Optional["Pruning"]] = (None,)) -> None:
    try:
        from explorer.models.llm import LLM_CATALOG, get_llm_spec
    except Exception as err:  # pragma: no cover - broken install
        chk.note(f"cannot import the LLM catalog ({err})")
        return
    for i, name in enumerate(llms):
        try:
            spec = get_llm_spec(name)
        except (ValueError, OSError) as err:
            chk.add(f"llms[{i}]", name, f"{err}; catalog: {', '.join(LLM_CATALOG)} or a config.json path")
            continue
        for j, pr in enumerate(pruning):
            if pr is not None and pr.after_layer >= spec.layers:
                chk.add(f"pruning[{j}].after_layer", pr.after_layer,
                          f"an integer 1..{spec.layers - 1}: llms[{i}] {name} has {spec.layers} decoder layers")


def _pruning_axis(chk: Problems, raw: Any) -> tuple[Optional["Pruning"], ...]:
    """The ``pruning:`` list: each entry null (no pruning) or ``{after_layer: K, ratio: r}``."""
    if raw is None:
        return (None,)
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw:
        chk.add("pruning", raw, "a non-empty list; each entry null (no pruning) or {after_layer: K, ratio: r}")
        return (None,)
    out: list[Optional["Pruning"]] = []
    for i, v in enumerate(raw):
        try:
            pr = as_pruning(v)
        except OptionError as err:
            field_name = err.field if err.field.startswith("pruning") else f"pruning.{err.field}"
            chk.add(field_name.replace("pruning", f"pruning[{i}]", 1), err.value, err.allowed)
            continue
        if pr not in out:
            out.append(pr)
    return tuple(out) or (None,)


def load_space(
    source: Any,
    *,
    name: Optional[str] = None,
    source_name: Optional[str] = None,
    check_models: bool = True,
    shape_fn: Optional[ShapeFn] = None,
    spaces_dir: Iterable[Union[str, Path]] = (),
) -> Space:
    """Read and validate a space: a YAML path, a space name, a dict or an OmegaConf node.

    ``check_models`` builds every knob combination on the meta device and resolves every LLM,
    so bad knob values and unknown names fail here (tests with fake encoders turn it off, or pass
    ``shape_fn``). Raises :class:`SpaceError` listing every problem.
    """
    if isinstance(source, Space):
        return source
    file_path: Optional[Path] = None
    if isinstance(source, (str, Path)):
        text = str(source)
        path = Path(text)
        if not path.suffix and os.sep not in text and not path.exists():
            path = find_space_file(text, spaces_dir)
        if not path.is_file():
            raise SpaceError(f"{text}: no such space file")
        file_path = path
        try:
            import yaml  # PyYAML comes with omegaconf

            raw = yaml.safe_load(path.read_text())
        except Exception as err:
            raise SpaceError(f"{path}: not valid YAML ({err})") from None
        if raw is None:
            raw = {}
    else:
        try:
            raw = _to_plain(source)
        except Exception as err:
            raise SpaceError(f"{source_name or 'space'}: cannot resolve the config ({err})") from None
    src = source_name or (str(file_path) if file_path else "space")
    chk = Problems(src)
    if not isinstance(raw, Mapping):
        chk.add("(top level)", raw, f"a mapping with keys {', '.join(SPACE_KEYS)}")
        _raise_if_any(chk)
    unknown = sorted(set(raw) - set(SPACE_KEYS))
    for key in unknown:
        chk.add(key, raw[key], f"unknown key; allowed: {', '.join(SPACE_KEYS)}")

    space_name = name or raw.get("name") or (file_path.stem if file_path else "space")
    if not isinstance(space_name, str) or not space_name.replace("-", "_").replace(".", "_").isidentifier():
        chk.add("name", space_name, "letters, digits, '_', '-' or '.' (it names the results folder)")

    entries = _encoder_entries(chk, raw.get("encoders"), raw.get("resolutions"))

    llms_raw = raw.get("llms")
    llms: list[str] = []
    if isinstance(llms_raw, str):
        llms_raw = [llms_raw]
    if not isinstance(llms_raw, (list, tuple)) or not llms_raw:
        chk.add("llms", llms_raw, "a non-empty list of LLM catalog names or config.json paths")
    else:
        for i, v in enumerate(llms_raw):
            if isinstance(v, str) and v.strip():
                if v not in llms:
                    llms.append(v)
            else:
                chk.add(f"llms[{i}]", v, "an LLM catalog name or a config.json path")

    tt_raw = raw.get("text_tokens", [0])
    if is_int(tt_raw):
        tt_raw = [tt_raw]
    text_tokens: list[int] = []
    if not isinstance(tt_raw, (list, tuple)) or not tt_raw:
        chk.add("text_tokens", tt_raw, "a non-empty list of integers >= 0 (prompt tokens after the image)")
    else:
        for i, v in enumerate(tt_raw):
            if is_int(v) and v >= 0:
                if v not in text_tokens:
                    text_tokens.append(v)
            else:
                chk.add(f"text_tokens[{i}]", v, "an integer >= 0")

    constraints = Constraints()
    c_raw = raw.get("constraints") or {}
    if not isinstance(c_raw, Mapping):
        chk.add("constraints", c_raw, "a mapping; allowed keys: max_visual_tokens, max_params_m")
    else:
        allowed = [f.name for f in fields(Constraints)]
        kw: dict[str, Any] = {}
        for key, v in c_raw.items():
            if key not in allowed:
                chk.add(f"constraints.{key}", v, f"unknown constraint; allowed: {', '.join(allowed)}")
            elif v is None:
                continue
            elif key == "max_visual_tokens" and not (is_int(v) and v > 0):
                chk.add(f"constraints.{key}", v, "a positive integer")
            elif key == "max_params_m" and not (is_number(v) and v > 0):
                chk.add(f"constraints.{key}", v, "a positive number of millions of parameters")
            else:
                kw[key] = v
        constraints = Constraints(**kw)

    knob_names = {k for e in entries for k, _ in e.knobs}
    pruning = _pruning_axis(chk, raw.get("pruning"))
    ex_raw = raw.get("exclude") or []
    exclude: list[tuple[tuple[str, Any], ...]] = []
    if not isinstance(ex_raw, (list, tuple)):
        chk.add("exclude", ex_raw, "a list of partial points (mappings)")
    else:
        ok_keys = sorted(set(POINT_FIELDS) | knob_names | {"pruning"})
        for i, ex in enumerate(ex_raw):
            if not isinstance(ex, Mapping) or not ex:
                chk.add(f"exclude[{i}]", ex, f"a non-empty mapping with keys from: {', '.join(ok_keys)}")
                continue
            bad = [k for k in ex if k not in ok_keys]
            for k in bad:
                chk.add(f"exclude[{i}].{k}", ex[k], f"unknown key; allowed: {', '.join(ok_keys)}")
            if bad:
                continue
            listed: dict[str, list[Any]] = {"encoder": [e.family for e in entries] + [e.label for e in entries],
                                            "resolution": [r for e in entries for r in e.resolutions],
                                            "llm": list(llms), "text_tokens": list(text_tokens)}
            for e in entries:
                for k, vals in e.knobs:
                    listed.setdefault(k, []).extend(vals)
            if "pruning" in ex:
                try:
                    wanted = as_pruning(ex["pruning"])
                except OptionError as err:
                    name = err.field if err.field.startswith("pruning") else f"pruning.{err.field}"
                    chk.add(f"exclude[{i}].{name}", err.value, err.allowed)
                    continue
                if wanted not in pruning:
                    listed_pr = ", ".join("null" if p is None else canonical_json(p.to_dict()) for p in pruning)
                    chk.add(f"exclude[{i}].pruning", ex["pruning"],
                            f"a value the space's pruning axis lists, or the entry matches no point; listed: {listed_pr}")
                    continue
            for k, v in ex.items():
                if k == "pruning":
                    continue
                if not any(_canonical(thaw(freeze(v))) == _canonical(thaw(w)) for w in listed.get(k, [])):
                    chk.add(f"exclude[{i}].{k}", v, "a value the space lists, or the entry matches no point; "
                              f"listed: {', '.join(map(str, dict.fromkeys(map(str, listed.get(k, [])))))}")
                    break
            else:  # the pruning entry as the Pruning it names (None: the unpruned points)
                exclude.append(tuple(sorted((str(k), as_pruning(v) if k == "pruning" else freeze(v))
                                            for k, v in ex.items())))

    measure_raw = raw.get("measure") or {}
    measure: tuple[tuple[str, Any], ...] = ()
    if not isinstance(measure_raw, Mapping):
        chk.add("measure", measure_raw, "a mapping of measurement settings (MeasureSettings fields)")
    else:
        allowed_m = _measure_fields()
        for key, v in measure_raw.items():
            if allowed_m is not None and key not in allowed_m:
                chk.add(f"measure.{key}", v, f"unknown measurement setting; allowed: {', '.join(allowed_m)}")
        measure = tuple(sorted((str(k), freeze(v)) for k, v in measure_raw.items()))

    description = raw.get("description") or ""
    _raise_if_any(chk)
    space = Space(name=str(space_name), encoders=entries, llms=tuple(llms), text_tokens=tuple(text_tokens),
                  constraints=constraints, exclude=tuple(exclude), measure=measure,
                  description=str(description), source=src, pruning=pruning)
    if check_models or shape_fn is not None:
        _check_models(chk, space, shape_fn)
        if check_models:
            _check_llms(chk, space.llms, space.pruning)
        _raise_if_any(chk)
    if check_models or shape_fn is not None or not space.constraints.active():
        enumerate_points(space, shape_fn=shape_fn)  # an empty product is an error here already
    return space


def _measure_fields() -> Optional[list[str]]:
    """MeasureSettings field names, or None while the measurement package is unavailable."""
    try:
        from explorer.measure.settings import MeasureSettings
    except Exception:
        return None
    return [f.name for f in fields(MeasureSettings)]


# --------------------------------------------------------------------------------------------
# Enumeration


def _matches(point: DesignPoint, exclusion: Sequence[tuple[str, Any]], label: str) -> bool:
    knobs = dict(point.knobs)
    for key, want in exclusion:
        if key == "pruning":  # a Pruning, or None for the unpruned points
            if want != point.pruning:
                return False
            continue
        if key == "encoder":
            have_any: Any = (point.encoder, label)
            if want not in have_any:
                return False
            continue
        if key in POINT_FIELDS:
            have = getattr(point, key)
        elif key in knobs:
            have = knobs[key]
        else:
            return False
        if _canonical(thaw(have)) != _canonical(thaw(want)):
            return False
    return True


def enumerate_points(space: Space, *, shape_fn: Optional[ShapeFn] = None,
                     check_empty: bool = True) -> list[DesignPoint]:
    """Every design point of ``space`` in a stable order, without duplicates.

    Order: encoder entry, knob combination, resolution, LLM, text tokens, pruning. Exclusions drop points
    matching all of their keys (``encoder`` matches the family or the entry's label);
    constraints use :func:`encoder_shape` (meta-device build; ``shape_fn`` replaces it in tests).
    """
    shape = shape_fn or encoder_shape
    points: list[DesignPoint] = []
    seen: set[DesignPoint] = set()
    excluded = 0
    constrained = 0
    c = space.constraints
    for entry in space.encoders:
        for combo in entry.knob_grid():
            for res in entry.resolutions:
                if c.active():
                    s = shape(entry.family, {k: thaw(v) for k, v in combo.items()}, res)
                    if (c.max_visual_tokens is not None and s.visual_tokens > c.max_visual_tokens) or (
                            c.max_params_m is not None and s.params_m > c.max_params_m):
                        constrained += len(space.llms) * len(space.text_tokens) * len(space.pruning)
                        continue
                for llm in space.llms:
                    for tt in space.text_tokens:
                        for pr in space.pruning:
                            p = DesignPoint.make(entry.family, {k: thaw(v) for k, v in combo.items()}, res, llm,
                                                 tt, pr)
                            if any(_matches(p, ex, entry.label) for ex in space.exclude):
                                excluded += 1
                                continue
                            if p not in seen:
                                seen.add(p)
                                points.append(p)
    if check_empty and not points:
        src = space.source or space.name
        raise SpaceError(f"{src}: the space has no design points: {excluded} excluded by `exclude`, "
                         f"{constrained} dropped by `constraints` ({space.constraints}); relax them")
    return points


def admits(space: Space, point: DesignPoint, *, shape_fn: Optional[ShapeFn] = None) -> bool:
    """Whether ``point`` is one of :func:`enumerate_points`' points, judged for this point alone
    (no enumeration: what a search over a space too large to list needs)."""
    c = space.constraints
    for entry in space.encoders:
        if entry.family != point.encoder or point.resolution not in entry.resolutions:
            continue
        knobs = dict(point.knobs)
        if set(knobs) != {k for k, _ in entry.knobs}:
            continue
        if any(freeze(knobs[k]) not in vals for k, vals in entry.knobs):
            continue
        if point.llm not in space.llms or point.text_tokens not in space.text_tokens:
            continue
        if point.pruning not in space.pruning:
            continue
        if any(_matches(point, ex, entry.label) for ex in space.exclude):
            continue
        if c.active():
            s = (shape_fn or encoder_shape)(point.encoder, point.knob_dict(), point.resolution)
            if (c.max_visual_tokens is not None and s.visual_tokens > c.max_visual_tokens) or (
                    c.max_params_m is not None and s.params_m > c.max_params_m):
                continue
        return True
    return False
