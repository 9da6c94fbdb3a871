"""Calibration: fit a profile's per-class efficiencies and per-call overhead to measured latencies.

The fit is a maximum a-posteriori estimate in log space. Measured medians scatter around the
model multiplicatively (``noise_sigma``, default 0.1 = about 10%); each efficiency starts from
the base profile's prior with a log-normal prior of width ``prior_sigma`` (default 1.0: a
factor e either way), so classes the measurements say little about stay near their priors
instead of running off. Compute efficiencies stay in (0, 1], memory efficiencies in (0, 20]
(bytes are counted as if nothing stayed in cache between operators, so a class may beat the
DRAM roof on that count). The roofs themselves (peak FLOP/s and bandwidth) are kept: the fit
says what fraction of them each class reaches.

The interval written into the profile comes from leave-one-out residuals: each measurement is
predicted by a fit without it, and the 90% interval is mean +- 1.645 sd of those log residuals.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import torch

from explorer.checks import check_int, check_number
from explorer.predict.model import TraceArrays, efficiencies, roofline_seconds
from explorer.predict.observations import Observation
from explorer.predict.opclass import COMPUTE_CLASSES, OP_CLASSES
from explorer.predict.profile import DeviceProfile, Sourced

__all__ = ["FitOptions", "fit_profile", "loo_log_residuals", "calibrated_profile", "with_fit"]

_MEMORY_CAP = 20.0


@dataclass(frozen=True)
class FitOptions:
    noise_sigma: float = 0.1
    prior_sigma: float = 1.0
    overhead_prior_sigma: float = 1.5
    iterations: int = 60

    def __post_init__(self) -> None:
        for name in ("noise_sigma", "prior_sigma", "overhead_prior_sigma"):
            check_number(name, getattr(self, name), low=0, low_open=True)
        check_int("iterations", self.iterations, low=1)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def fit_profile(observations: Sequence[Observation], base: DeviceProfile, dtype: str,
                options: FitOptions = FitOptions()) -> tuple[dict[str, float], dict[str, float], float]:
    """Fitted (compute efficiencies, memory efficiencies, overhead seconds)."""
    if not observations:
        raise ValueError("calibration needs at least one measurement")
    parts = [TraceArrays.of(o.trace) for o in observations]
    # all observations' records in one set of columns; `segment` says which observation each is
    arrays = TraceArrays(cls=torch.cat([a.cls for a in parts]), flops=torch.cat([a.flops for a in parts]),
                         bytes=torch.cat([a.bytes for a in parts]), count=torch.cat([a.count for a in parts]))
    segment = torch.cat([torch.full((len(a.cls),), i, dtype=torch.long) for i, a in enumerate(parts)])
    measured = torch.tensor([math.log(o.seconds) for o in observations], dtype=torch.float64)
    prior_c, prior_m = efficiencies(base)
    # unconstrained parameters: compute eff = sigmoid(u), memory eff = cap * sigmoid(v), overhead = exp(w)
    u0 = torch.tensor([_logit(float(x)) for x in prior_c], dtype=torch.float64)
    v0 = torch.tensor([_logit(float(x) / _MEMORY_CAP) for x in prior_m], dtype=torch.float64)
    w0 = torch.tensor(math.log(base.overhead_s.value), dtype=torch.float64)
    u, v, w = u0.clone().requires_grad_(True), v0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    log_prior_c, log_prior_m = torch.log(prior_c), torch.log(prior_m)
    compute_mask = torch.tensor([c in COMPUTE_CLASSES for c in OP_CLASSES], dtype=torch.float64)
    peak, bandwidth = base.peak(dtype), base.memory_bandwidth.value

    def loss() -> torch.Tensor:
        ce, me, oh = torch.sigmoid(u), _MEMORY_CAP * torch.sigmoid(v), torch.exp(w)
        per_record = roofline_seconds(arrays, peak=peak, bandwidth=bandwidth, compute_eff=ce, memory_eff=me,
                                      overhead=oh)[0]
        preds = torch.zeros(len(parts), dtype=torch.float64).index_add(0, segment, per_record)
        fit = (((torch.log(preds) - measured) / options.noise_sigma) ** 2).sum()
        prior = ((((torch.log(ce) - log_prior_c) * compute_mask) / options.prior_sigma) ** 2).sum()
        prior = prior + (((torch.log(me) - log_prior_m) / options.prior_sigma) ** 2).sum()
        prior = prior + ((w - w0) / options.overhead_prior_sigma) ** 2
        return fit + prior

    opt = torch.optim.LBFGS([u, v, w], lr=1.0, max_iter=options.iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        ce, me = torch.sigmoid(u), _MEMORY_CAP * torch.sigmoid(v)
        compute = {c: float(ce[i]) for i, c in enumerate(OP_CLASSES) if c in COMPUTE_CLASSES}
        memory = {c: float(me[i]) for i, c in enumerate(OP_CLASSES)}
        return compute, memory, float(torch.exp(w))


def with_fit(base: DeviceProfile, compute: Mapping[str, float], memory: Mapping[str, float],
             overhead: float, source: str) -> DeviceProfile:
    """``base`` with fitted efficiencies and overhead, rounded as a profile file keeps them, and
    ``source`` saying where they came from (the fit and the split validation write the same way)."""
    return base.replace(compute_efficiency={k: round(v, 5) for k, v in compute.items()},
                        memory_efficiency={k: round(v, 5) for k, v in memory.items()},
                        overhead_s=Sourced(float(f"{overhead:.4g}"), source), efficiency_source=source)


def loo_log_residuals(observations: Sequence[Observation], base: DeviceProfile, dtype: str,
                      options: FitOptions = FitOptions()) -> list[float]:
    """log(measured / predicted) of each observation, predicted by a fit without it."""
    from explorer.predict.model import predict_trace

    out = []
    for i, obs in enumerate(observations):
        rest = [o for j, o in enumerate(observations) if j != i]
        if not rest:
            break
        compute, memory, overhead = fit_profile(rest, base, dtype, options)
        prof = with_fit(base, compute, memory, overhead, "loo")
        out.append(math.log(obs.seconds / predict_trace(obs.trace, prof, dtype).seconds))
    return out


def calibrated_profile(observations: Sequence[Observation], base: DeviceProfile, *, name: str, dtype: str,
                       env_key: str, environment: Mapping[str, Any], store_url: str,
                       options: FitOptions = FitOptions(), leave_one_out: bool = True) -> DeviceProfile:
    """``base`` with efficiencies and overhead fitted to ``observations`` and an interval from
    leave-one-out residuals (or the base interval when there are fewer than 4 observations)."""
    compute, memory, overhead = fit_profile(observations, base, dtype, options)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    source = (f"calibrated by `explorer calibrate` on {len(observations)} measurements ({dtype}, "
              f"{environment.get('threads')} threads, {environment.get('device')}) from {store_url}, "
              f"environment {env_key}, {when}")
    prof = with_fit(base, compute, memory, overhead, source)
    low, high, isrc = base.interval_low, base.interval_high, base.interval_source
    loo: list[float] = []
    if leave_one_out and len(observations) >= 4:
        loo = loo_log_residuals(observations, base, dtype, options)
        mean, sd = statistics.fmean(loo), statistics.stdev(loo)
        low, high = min(1.0, math.exp(mean - 1.645 * sd)), max(1.0, math.exp(mean + 1.645 * sd))
        isrc = (f"90% interval from leave-one-out log residuals of the {len(observations)} calibration "
                f"measurements (mean {mean:+.3f}, sd {sd:.3f})")
    calibration = {
        "store": store_url, "env_key": env_key, "environment": dict(environment), "dtype": dtype,
        "measurements": len(observations), "fitted_at": when, "base_profile": base.name,
        "options": {"noise_sigma": options.noise_sigma, "prior_sigma": options.prior_sigma},
        "loo_median_abs_error": (statistics.median(abs(math.expm1(r)) for r in loo) if loo else None),
        "labels": [o.label for o in observations],
    }
    threads = environment.get("threads") if base.kind == "cpu" else base.threads
    description = base.description.split('; efficiencies are')[0] + f'; efficiencies calibrated ({when})'
    return prof.replace(name=name, description=description, interval_low=round(low, 4), interval_high=round(high, 4), interval_source=isrc,
                        calibration=calibration, threads=threads)
