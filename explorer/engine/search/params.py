"""How a space becomes optuna parameters (see explorer.engine.search's docstring)."""
from __future__ import annotations

import decimal
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution,
                                  distribution_to_json)
from optuna.trial import Trial

from explorer.checks import is_int, is_number
from explorer.data.space import DesignPoint, EncoderEntry, Space, canonical_json, freeze, thaw
from explorer.engine.search.objectives import SearchError

__all__ = ["Dimension", "ParamSpace"]


_SCALARS = (type(None), bool, int, float, str)


def _progression(values: Sequence[Any]) -> Optional[tuple[str, Any, Any, Any]]:
    """(kind, low, high, step) when ``values`` are 3+ numbers forming an arithmetic progression."""
    if len(values) < 3 or not all(is_number(v) for v in values):
        return None
    ordered = sorted(values)
    if all(is_int(v) for v in values):
        step = ordered[1] - ordered[0]
        if step > 0 and all(b - a == step for a, b in zip(ordered, ordered[1:])):
            return "int", ordered[0], ordered[-1], step
        return None
    try:
        d = [decimal.Decimal(repr(float(v))) for v in ordered]
    except decimal.InvalidOperation:  # pragma: no cover - finite floats always convert
        return None
    step_d = d[1] - d[0]
    if step_d <= 0 or any(b - a != step_d for a, b in zip(d, d[1:])):
        return None
    return "float", float(ordered[0]), float(ordered[-1]), float(step_d)


@dataclass(frozen=True)
class Dimension:
    """One optuna parameter standing for one key of the space and the values it lists.

    ``kind``: ``fixed`` (one value, not sampled), ``int``/``float`` (stepped, ordinal) or
    ``categorical``. Values keep the space's own (frozen) form, so decoded points equal grid points.
    """

    name: str
    values: tuple[Any, ...]
    kind: str
    low: Any = None
    high: Any = None
    step: Any = None

    @classmethod
    def build(cls, name: str, values: Sequence[Any], ordinal: bool = True) -> "Dimension":
        vals = tuple(dict.fromkeys(values))
        if not vals:
            raise SearchError(f"invalid {name}=[]: at least one value is needed")
        if len(vals) == 1:
            return cls(name, vals, "fixed")
        prog = _progression(vals) if ordinal else None
        if prog is not None:
            kind, low, high, step = prog
            return cls(name, vals, kind, low, high, step)
        return cls(name, vals, "categorical")

    def choices(self) -> tuple[Any, ...]:
        """Categorical choices: scalars as they are, lists as their canonical JSON text."""
        return tuple(v if isinstance(v, _SCALARS) else canonical_json(thaw(v)) for v in self.values)

    def distribution(self) -> Optional[BaseDistribution]:
        if self.kind == "fixed":
            return None
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), step=int(self.step))
        if self.kind == "float":
            return FloatDistribution(float(self.low), float(self.high), step=float(self.step))
        return CategoricalDistribution(self.choices())

    def suggest(self, trial: Trial) -> Any:
        """Sample this parameter in ``trial`` and return the space's value."""
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "int":
            raw: Any = trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step))
        elif self.kind == "float":
            raw = trial.suggest_float(self.name, float(self.low), float(self.high), step=float(self.step))
        else:
            raw = trial.suggest_categorical(self.name, self.choices())
        return self.decode(raw)

    def decode(self, raw: Any) -> Any:
        """The listed value a sampled ``raw`` stands for (nearest for numbers)."""
        if self.kind in ("int", "float"):
            return min(self.values, key=lambda v: abs(float(v) - float(raw)))
        return self.values[self.choices().index(raw)]

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.name} = {thaw(self.values[0])!r} (fixed)"
        if self.kind in ("int", "float"):
            return f"{self.name}: {self.kind} {self.low}..{self.high} step {self.step} ({len(self.values)} values)"
        return f"{self.name}: categorical {[thaw(v) for v in self.values]}"


@dataclass(frozen=True)
class _EntryDims:
    label: str
    entry: EncoderEntry
    knobs: tuple[tuple[str, Dimension], ...]  # knob name -> its parameter
    resolution: Dimension


@dataclass(frozen=True)
class ParamSpace:
    """How a :class:`~explorer.data.space.Space` maps to optuna parameters (see the module docstring)."""

    encoder: Dimension
    entries: tuple[_EntryDims, ...]
    llm: Dimension
    text_tokens: Dimension
    pruning: Optional[Dimension] = None  # None: the space has no pruning axis (nothing sampled, no parameter)

    @classmethod
    def from_space(cls, space: Space, ordinal: bool = True) -> "ParamSpace":
        labels: list[str] = []
        for e in space.encoders:
            label = e.label or e.family
            while label in labels:
                label = f"{label}#{len(labels)}"
            labels.append(label)
        multi = len(space.encoders) > 1
        shared_res = len({e.resolutions for e in space.encoders}) == 1
        entries = []
        for label, e in zip(labels, space.encoders):
            prefix = f"{label}." if multi else ""
            knobs = tuple((k, Dimension.build(f"{prefix}{k}", vals, ordinal)) for k, vals in e.knobs)
            res_name = "resolution" if shared_res else f"{label}.resolution"
            entries.append(_EntryDims(label, e, knobs, Dimension.build(res_name, e.resolutions, ordinal)))
        pruning = None
        if space.pruning != (None,):  # each option as its frozen {after_layer, ratio} (None: no pruning)
            pruning = Dimension.build("pruning", [None if p is None else freeze(p.to_dict()) for p in space.pruning],
                                      ordinal=False)
        return cls(encoder=Dimension.build("encoder", labels, ordinal=False), entries=tuple(entries),
                   llm=Dimension.build("llm", space.llms, ordinal=False),
                   text_tokens=Dimension.build("text_tokens", space.text_tokens, ordinal), pruning=pruning)

    def dimensions(self) -> list[Dimension]:
        """Every parameter once (conditional ones included), in a stable order."""
        out: dict[str, Dimension] = {self.encoder.name: self.encoder}
        for ed in self.entries:
            for d in (*(d for _, d in ed.knobs), ed.resolution):
                out.setdefault(d.name, d)
        out[self.llm.name] = self.llm
        out[self.text_tokens.name] = self.text_tokens
        if self.pruning is not None:
            out[self.pruning.name] = self.pruning
        return list(out.values())

    def distributions(self) -> dict[str, BaseDistribution]:
        return {d.name: dist for d in self.dimensions() if (dist := d.distribution()) is not None}

    def grid_size(self) -> int:
        """Points of the full product (before the space's exclusions and constraints)."""
        per_llm = len(self.llm.values) * len(self.text_tokens.values)
        per_llm *= len(self.pruning.values) if self.pruning is not None else 1
        return sum(math.prod(len(d.values) for _, d in ed.knobs) * len(ed.resolution.values) * per_llm
                   for ed in self.entries)

    def suggest(self, trial: Trial) -> DesignPoint:
        """Sample a design point in ``trial``."""
        label = self.encoder.suggest(trial)
        ed = next(e for e in self.entries if e.label == label)
        knobs = {k: thaw(d.suggest(trial)) for k, d in ed.knobs}
        resolution = ed.resolution.suggest(trial)
        pruning = None if self.pruning is None else self.pruning.suggest(trial)  # a frozen {after_layer, ratio}
        return DesignPoint.make(ed.entry.family, knobs, resolution, self.llm.suggest(trial),
                                self.text_tokens.suggest(trial), None if pruning is None else dict(pruning))

    def describe(self) -> str:
        return "\n".join(d.describe() for d in self.dimensions())

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able definition (parameters and what each maps to) for the study digest (``pruning``
        only when the space has that axis, so other studies keep their digest)."""
        out = {"params": {n: distribution_to_json(d) for n, d in self.distributions().items()},
               "entries": [{"label": ed.label, "family": ed.entry.family,
                            "knobs": {k: [thaw(v) for v in d.values] for k, d in ed.knobs},
                            "resolutions": list(ed.resolution.values)} for ed in self.entries],
               "llms": list(self.llm.values), "text_tokens": list(self.text_tokens.values)}
        if self.pruning is not None:
            out["pruning"] = [None if v is None else dict(v) for v in self.pruning.values]
        return out
