"""Planning a sweep: enumerate the points, factorise them into unique jobs, compare with the store.

Nothing is measured here; a dry run prints :meth:`SweepPlan.describe`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

from explorer.data.confidence import selected_for_remeasure
from explorer.data.space import DesignPoint, EncoderShape, Space, SpaceError, digest, enumerate_points, load_space
from explorer.data.store import PointRecord, Store
from explorer.engine.backend import MeasureBackend
from explorer.engine.options import SweepOptions
from explorer.engine.sweep.isolation import RETRIED_ON_RESUME
from explorer.engine.sweep.footprint import LARGE_RESOLUTION, available_memory_bytes, largest_tensor_bytes
from explorer.engine.sweep.estimate import estimate_seconds, format_duration
from explorer.engine.sweep.keys import KINDS, Job, encoder_key, prefill_key, projector_key, pruned_prefill_key

__all__ = ["MAX_SWEEP_POINTS", "SweepPlan", "plan_sweep", "default_settings", "resolve_space", "knob_text"]

#: A sweep enumerates every point; above this many in the product, use ``explorer search``.
MAX_SWEEP_POINTS: int = 20_000


@dataclass
class SweepPlan:
    """What a sweep will do: its points, unique measurements, and what is already stored."""

    space: Space
    points: list[DesignPoint]
    point_records: list[PointRecord]
    jobs: list[Job]  # unique measurements in execution order
    todo: list[Job]  # those still to measure in this environment
    env_key: str
    environment: dict[str, Any]
    estimates_s: dict[str, float]  # job key -> estimated seconds
    estimate_basis: dict[str, str]  # job key -> "model" | "past"
    params_m: dict[str, float] = field(default_factory=dict)  # job key -> parameters (millions)
    remeasured: int = 0  # stored ok values put back into todo by sweep.remeasure
    remeasure: str = "none"

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for kind in KINDS:
            total = sum(j.kind == kind for j in self.jobs)
            todo = sum(j.kind == kind for j in self.todo)
            out[kind] = {"unique": total, "stored": total - todo, "to_measure": todo}
        return out

    def estimated_seconds(self) -> float:
        return sum(self.estimates_s[j.key] for j in self.todo)

    def describe(self) -> str:
        """The dry-run text: points, unique measurements per factor and a time estimate."""
        c = self.counts()
        lines = [f"space {self.space.name!r}: {len(self.points)} design points"
                 + (f" ({self.space.source})" if self.space.source else ""),
                 f"unique measurements: {sum(v['unique'] for v in c.values())} "
                 f"(encoder {c['encoder']['unique']}, projector {c['projector']['unique']}, "
                 f"prefill {c['prefill']['unique']})"]
        for kind, v in c.items():
            lines.append(f"  {kind:<9} {v['unique']:>4} unique, {v['stored']:>4} already stored, "
                         f"{v['to_measure']:>4} to measure")
        if self.remeasure != "none":
            lines.append(f"  sweep.remeasure={self.remeasure}: {self.remeasured} stored value(s) measured again "
                         f"(the earlier ones are kept in measurement_history)")
        past = sum(1 for j in self.todo if self.estimate_basis.get(j.key) == "past")
        lines.append(f"estimated time: about {format_duration(self.estimated_seconds())} for {len(self.todo)} "
                     f"measurements ({past} from past durations in the store, {len(self.todo) - past} from the "
                     f"FLOP/throughput model; see explorer.engine.sweep.estimate)")
        env = self.environment
        lines.append(f"environment {self.env_key}: {env.get('device')} ({env.get('device_type')}), "
                     f"{env.get('dtype')}, {env.get('threads')} threads, torch {env.get('torch_version')}")
        return "\n".join(lines)


def knob_text(knobs: Mapping[str, Any]) -> str:
    return "" if not knobs else "[" + ",".join(f"{k}={v}" for k, v in sorted(knobs.items())) + "]"


def _env_dict(env: Any) -> dict[str, Any]:
    if hasattr(env, "to_dict"):
        return dict(env.to_dict())
    if dataclasses.is_dataclass(env):
        return dataclasses.asdict(env)
    return dict(env)


def resolve_space(space: Union[Space, str, Any], backend: MeasureBackend) -> Space:
    """A Space from a Space, a space name, a YAML path or a mapping (validated against the backend)."""
    if isinstance(space, Space):
        return space
    return load_space(space, shape_fn=backend.shape_fn(), check_models=backend.real_models)


def default_settings(space: Optional[Space] = None, **overrides: Any) -> Any:
    """MeasureSettings from the space's ``measure:`` defaults, then ``overrides`` (None = unset)."""
    from explorer.checks import OptionError
    from explorer.measure.settings import MeasureSettings

    values = dict(space.measure_defaults()) if space is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    allowed = {f.name for f in dataclasses.fields(MeasureSettings)}
    for key in sorted(set(values) - allowed):
        raise OptionError(f"measure.{key}", values[key], "unknown measurement setting; allowed: "
                          + ", ".join(sorted(allowed)))
    return MeasureSettings(**values).check_on_machine()


def _check_size(space: Space) -> None:
    size = space.product_size()
    if size > MAX_SWEEP_POINTS:
        raise SpaceError(f"{space.source or space.name}: the space has {size:,} design points in its product, over "
                         f"the sweep limit of {MAX_SWEEP_POINTS:,}: narrow it (fewer knob values, resolutions, "
                         f"LLMs or prompts), or search it with `explorer search` (optuna measures only the "
                         f"points it asks for)")


def plan_sweep(space: Union[Space, str, Any], settings: Any = None, store: Optional[Store] = None,
               options: SweepOptions = SweepOptions(), backend: MeasureBackend = MeasureBackend(),
               points: Optional[Sequence[DesignPoint]] = None) -> SweepPlan:
    """Enumerate, factorise and compare with the store; measures nothing (what dry runs print).

    ``points`` plans exactly these design points instead of enumerating the whole space (what the
    search engine does for each trial); duplicates are dropped, order is kept. ``options.resume``
    and ``options.retry_failed`` decide which stored measurements count as done;
    ``options.remeasure`` puts stored ok ones whose timings are flagged (noisy, contended, either,
    or all of them) back to be measured in this environment.
    """
    space = resolve_space(space, backend)
    if settings is None:
        settings = default_settings(space)
    env = backend.environment(settings)
    env_key = str(env.key)
    env_dict = _env_dict(env)
    if points is None:
        _check_size(space)
        points = enumerate_points(space, shape_fn=backend.encoder_shape)
    else:
        points = list(dict.fromkeys(points))
    # Points grouped by LLM (stable, in order of first appearance): each point still completes
    # as soon as its own three measurements are done, and one LLM's prefills run back to back,
    # so the measuring process reuses the LLM it built last instead of rebuilding it.
    llm_rank: dict[str, int] = {}
    for p in points:
        llm_rank.setdefault(p.llm, len(llm_rank))
    points = sorted(points, key=lambda p: llm_rank[p.llm])

    llm_cache: dict[str, tuple[int, dict[str, Any], float]] = {}
    shape_cache: dict[tuple[str, str, int], EncoderShape] = {}
    jobs: dict[str, Job] = {}
    params_m: dict[str, float] = {}
    gflops_ref: dict[tuple[str, str], tuple[float, int, float]] = {}  # config -> (gflops, tokens, params_m) counted once
    records: list[PointRecord] = []

    def add(job: Job, params: float) -> None:
        if job.key not in jobs:
            jobs[job.key] = job
            params_m[job.key] = params

    for p in points:
        knobs = p.knob_dict()
        ck = (p.encoder, digest(knobs), p.resolution)
        if ck not in shape_cache:
            try:
                shape_cache[ck] = backend.encoder_shape(p.encoder, knobs, p.resolution)
            except (ValueError, TypeError) as err:
                raise SpaceError(f"{space.source or space.name}: encoder {p.encoder} {knobs} at resolution "
                                 f"{p.resolution}: {err}") from None
        s = shape_cache[ck]
        if p.llm not in llm_cache:
            try:
                llm_cache[p.llm] = backend.llm_info(p.llm)
            except (ValueError, OSError) as err:
                raise SpaceError(f"{space.source or space.name}: llms: {err}") from None
        hidden, spec, llm_params = llm_cache[p.llm]

        est = _encoder_gflops_estimate(backend, gflops_ref, p.encoder, knobs, p.resolution, s)
        ek = encoder_key(p.encoder, knobs, p.resolution)
        add(Job("encoder", ek, {"encoder": p.encoder, "knobs": knobs, "resolution": p.resolution}, est,
                f"{p.encoder}{knob_text(knobs)}@{p.resolution}"), s.params_m)

        pk = projector_key(s.out_channels, hidden, s.visual_tokens)
        proj_params = s.out_channels * hidden + hidden * hidden
        add(Job("projector", pk, {"in_channels": s.out_channels, "hidden": hidden, "tokens": s.visual_tokens},
                2 * s.visual_tokens * proj_params / 1e9, f"mlp {s.out_channels}->{hidden} x{s.visual_tokens}"),
            proj_params / 1e6)

        tokens = s.visual_tokens + p.text_tokens
        if p.pruning is None:
            fk = prefill_key(spec, tokens)
            add(Job("prefill", fk, {"llm": p.llm, "tokens": tokens}, 2 * llm_params * 1e6 * tokens / 1e9,
                    f"{p.llm} x{tokens}"), llm_params)
        else:
            fk = _pruned_prefill_job(add, space, p, spec, s.visual_tokens, llm_params)
        records.append(PointRecord(space=space.name, point=p, encoder_key=ek, projector_key=pk, prefill_key=fk,
                                   visual_tokens=s.visual_tokens))

    ordered = list(jobs.values())
    _check_fits(space, records, llm_cache, ordered, settings, backend)
    stored: dict[tuple[str, str], str] = store.measurement_status(env_key) if store is not None else {}
    again = _remeasured(store, env_key, options.remeasure) if options.resume else set()
    if options.resume:
        def done(j: Job) -> bool:
            status = stored.get((j.kind, j.key))
            if status is None or status in RETRIED_ON_RESUME or (j.kind, j.key) in again:
                return False
            return status == "ok" or not options.retry_failed
        todo = [j for j in ordered if not done(j)]
    else:
        todo = list(ordered)

    past: dict[str, float] = {}
    if store is not None:
        for rec in store.measurements(env_key=env_key):
            if rec.status == "ok" and rec.duration_s:
                past[rec.key] = float(rec.duration_s)  # latest wins (ordered by id)
    device_type = str(env_dict.get("device_type", "cpu"))
    threads = int(env_dict.get("threads") or 1)
    estimates, basis = {}, {}
    for j in ordered:
        if j.key in past:
            estimates[j.key], basis[j.key] = past[j.key], "past"
        else:
            estimates[j.key] = estimate_seconds(j.kind, j.gflops_est, params_m[j.key], settings, device_type, threads)
            basis[j.key] = "model"
    remeasured = sum((j.kind, j.key) in again for j in todo)
    return SweepPlan(space=space, points=points, point_records=records, jobs=ordered, todo=todo, env_key=env_key,
                     environment=env_dict, estimates_s=estimates, estimate_basis=basis, params_m=params_m,
                     remeasured=remeasured, remeasure=options.remeasure)


def _pruned_prefill_job(add: Any, space: Space, p: DesignPoint, spec: Mapping[str, Any], visual: int,
                        llm_params: float) -> str:
    """Plan the two-segment prefill of a point that prunes visual tokens inside the LLM; its key."""
    pr = p.pruning
    layers = spec.get("layers")
    if layers is not None and pr.after_layer >= int(layers):
        raise SpaceError(f"{space.source or space.name}: pruning after_layer={pr.after_layer} with llm {p.llm}: "
                         f"an integer 1..{int(layers) - 1} (it has {int(layers)} decoder layers)")
    tokens, kept = visual + p.text_tokens, p.text_tokens + pr.kept(visual)
    share = pr.after_layer / int(layers) if layers else 1.0  # layers over the whole prompt
    fk = pruned_prefill_key(spec, visual, p.text_tokens, pr.to_dict())
    add(Job("prefill", fk, {"llm": p.llm, "tokens": tokens, "visual": visual, "text": p.text_tokens,
                            "pruning": pr.to_dict()},
            2 * llm_params * 1e6 * (share * tokens + (1 - share) * kept) / 1e9,
            f"{p.llm} x{tokens} pruned {pr.ratio:g} after {pr.after_layer}"), llm_params)
    return fk


def _remeasured(store: Optional[Store], env_key: str, mode: str) -> set[tuple[str, str]]:
    """``(kind, key)`` of the stored measurements of this environment ``sweep.remeasure=mode``
    takes again (see :func:`explorer.data.confidence.selected_for_remeasure`)."""
    if store is None or mode == "none":
        return set()
    return {(m.kind, m.key) for m in store.measurements(env_key=env_key)
            if selected_for_remeasure(mode, m.status, m.payload)}


#: Encoder configs whose FLOPs a plan counts on the meta device (about a second each); the rest
#: are scaled from those of the same family, so planning a wide space stays quick.
MAX_COUNTED_CONFIGS: int = 16


def _check_fits(space: Space, records: Sequence[PointRecord], llms: Mapping[str, tuple[int, dict[str, Any], float]],
                jobs: Sequence[Job], settings: Any, backend: MeasureBackend) -> None:
    """Refuse, before any work, prompts beyond an LLM's positions and encoder inputs whose largest
    tensor alone exceeds the device's memory (see :mod:`.footprint`)."""
    src = space.source or space.name
    problems: list[str] = []
    seen: set[tuple[str, int]] = set()
    for rec in records:
        limit = llms[rec.point.llm][1].get("max_position")
        tokens = (rec.visual_tokens or 0) + rec.point.text_tokens
        if limit is not None and tokens > int(limit) and (rec.point.llm, tokens) not in seen:
            seen.add((rec.point.llm, tokens))
            problems.append(f"{src}: llm {rec.point.llm} at resolution {rec.point.resolution} with text_tokens "
                            f"{rec.point.text_tokens}: a prompt of {tokens} tokens ({rec.visual_tokens} visual) is "
                            f"beyond the LLM's {int(limit)} positions (max_position_embeddings)")
            if len(problems) >= 5:
                break
    if backend.real_models:
        free = available_memory_bytes(settings)
        for job in jobs:
            res = job.inputs.get("resolution", 0) if job.kind == "encoder" else 0
            if free is None or res < LARGE_RESOLUTION:
                continue
            need = largest_tensor_bytes(job.inputs["encoder"], job.inputs["knobs"], res,
                                        int(getattr(settings, "batch_size", 1)), str(getattr(settings, "dtype", "")))
            if need > free:
                problems.append(f"{src}: encoder {job.label}: one tensor of its forward pass alone takes "
                                f"{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB this device has free; "
                                f"lower the resolution or the batch size")
    if problems:
        raise SpaceError(problems)


def _encoder_gflops_estimate(backend: MeasureBackend, cache: dict[tuple[str, str], tuple[float, int, float]],
                             family: str, knobs: Mapping[str, Any], resolution: int, shape: EncoderShape) -> float:
    """GFLOPs for the time model: a meta-device count for the first configs of a space, scaled by
    tokens to other resolutions; later configs take the median GFLOPs per (parameter x token) of
    the counted configs of their family; with nothing counted, 2 x params x tokens."""
    naive = 2 * shape.params_m * 1e6 * shape.visual_tokens / 1e9
    cfg = (family, digest(knobs))
    if cfg not in cache and backend.encoder_gflops is not None and len(cache) < MAX_COUNTED_CONFIGS:
        try:
            cache[cfg] = (backend.encoder_gflops(family, knobs, resolution), shape.visual_tokens, shape.params_m)
        except Exception:  # the estimate is optional; the measurement will say the truth
            cache[cfg] = (float("nan"), shape.visual_tokens, shape.params_m)
    if cfg in cache:
        g0, t0, _ = cache[cfg]
        est = g0 * shape.visual_tokens / max(1, t0)
        return est if math.isfinite(est) else naive
    ratios = sorted(g / (p * t) for (fam, _), (g, t, p) in cache.items()
                    if fam == family and math.isfinite(g) and t > 0 and p > 0)
    if not ratios:
        return naive
    return ratios[len(ratios) // 2] * shape.params_m * shape.visual_tokens
