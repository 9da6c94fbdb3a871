"""Measured latencies paired with their operator traces: what calibration fits and validation scores.

Each ``ok`` measurement in a store (an encoder at a resolution, a projector, a prefill) becomes an
:class:`Observation`: the factor's trace on ``meta`` (in the measurement's dtype) and its
measured median. Values from different environments are never mixed: one environment is chosen.

``speed="probe"`` rescales every median to one machine speed: each timing carries the reference
probe's time beside its samples (``explorer.measure.probe``; ``probe_units`` = median of sample /
probe), so ``probe_units x`` the environment's median probe time is the value the measurement
would have had had the machine run at its median speed throughout. On a host whose speed moves
on its own (docs/benchmarks.md, "host drift") this removes the drift between measurements before
a model is fitted to them; values timed without the probe stay as measured.
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from explorer.measure.settings import MeasureSettings, settings_digest
from explorer.predict.trace import OpTrace, trace_encoder, trace_prefill, trace_projector
from explorer.data.store import MeasurementRecord, Store, as_store

__all__ = ["Observation", "choose_environment", "observations_from_store", "trace_of"]


@dataclass(frozen=True)
class Observation:
    kind: str          # encoder | projector | prefill
    key: str           # the measurement key in the store
    label: str         # human-readable: "fastvithd {...} @512", "qwen2-0.5b x 96 tokens"
    family: str        # encoder family, "projector" or the LLM name (for stratified splits)
    trace: OpTrace
    seconds: float     # measured median
    p10_s: float
    p90_s: float


def choose_environment(store: Union[Store, str], env_key: Optional[str] = None) -> tuple[str, dict[str, Any]]:
    """``env_key`` (checked) or the environment with the most ok measurements."""
    st = as_store(store, create=False)
    envs = st.environments()
    if not envs:
        raise ValueError(f"store {st.url} holds no measurements: run `explorer sweep` first")
    if env_key is not None:
        if env_key not in envs:
            raise ValueError(f"invalid env={env_key!r}: the store holds {', '.join(sorted(envs))}")
        return env_key, {k: v for k, v in envs[env_key].items() if k != "_last"}
    counts = Counter(r.env_key for r in st.measurements() if r.status == "ok")
    if not counts:
        raise ValueError(f"store {st.url} holds no successful measurement")
    best = max(counts, key=lambda k: (counts[k], str(envs[k].get("_last"))))
    return best, {k: v for k, v in envs[best].items() if k != "_last"}


def _digest_settings(environment: Mapping[str, Any]) -> tuple[int, bool]:
    """Batch size and reparameterization of an environment (the digest is checked, not guessed)."""
    dtype = environment.get("dtype", "float32")
    digest = environment.get("settings_digest")
    for batch in (1, 2, 4, 8, 16, 32):
        for reparam in (True, False):
            for cl in (False, True):
                for comp in (False, True):
                    s = MeasureSettings(device="cpu", dtype=dtype, batch_size=batch, reparameterize=reparam,
                                        channels_last=cl, compile=comp)
                    if settings_digest(s) == digest:
                        if comp or cl:
                            raise ValueError("the environment was measured with "
                                             f"{'compile=True' if comp else 'channels_last=True'}: the cost model "
                                             "describes eager, contiguous execution")
                        return batch, reparam
    raise ValueError(f"environment settings digest {digest!r} matches no known measurement settings")


def trace_of(record: MeasurementRecord, dtype: str, batch: int = 1, reparameterize: bool = True) -> OpTrace:
    """The operator trace of one stored measurement's factor."""
    inp = record.inputs
    if record.kind == "encoder":
        return trace_encoder(inp["encoder"], inp.get("knobs") or {}, int(inp["resolution"]), dtype=dtype,
                             batch=batch, reparameterize=reparameterize)
    if record.kind == "projector":
        return trace_projector(int(inp["in_channels"]), int(inp["hidden"]), int(inp["tokens"]), dtype=dtype)
    if record.kind == "prefill":
        spec = inp.get("spec") or inp["llm"]
        return trace_prefill(spec, int(inp["tokens"]), dtype=dtype)
    raise ValueError(f"unknown measurement kind {record.kind!r}")


def _label(record: MeasurementRecord) -> tuple[str, str]:
    inp = record.inputs
    if record.kind == "encoder":
        knobs = inp.get("knobs") or {}
        text = ",".join(f"{k}={v}" for k, v in sorted(knobs.items()))
        return f"{inp['encoder']}{'(' + text + ')' if text else ''}@{inp['resolution']}", str(inp["encoder"])
    if record.kind == "projector":
        return f"projector {inp['in_channels']}->{inp['hidden']} x{inp['tokens']}", "projector"
    return f"{inp['llm']} prefill x{inp['tokens']}", str(inp["llm"])


SPEEDS = ("measured", "probe")


def observations_from_store(store: Union[Store, str], env_key: Optional[str] = None,
                            kinds: tuple[str, ...] = ("encoder", "projector", "prefill"),
                            speed: str = "measured") -> tuple[list[Observation], str, dict[str, Any]]:
    """Every ok, timed measurement of one environment, with its trace; and that environment.

    ``speed``: ``measured`` (the medians as timed) or ``probe`` (each rescaled to the
    environment's median machine speed; see the module docstring).
    """
    if speed not in SPEEDS:
        raise ValueError(f"invalid speed={speed!r}: one of {', '.join(map(repr, SPEEDS))}")
    st = as_store(store, create=False)
    key, environment = choose_environment(st, env_key)
    batch, reparam = _digest_settings(environment)
    dtype = str(environment.get("dtype", "float32"))
    timed = []
    for rec in st.measurements(env_key=key):
        if rec.status != "ok" or rec.kind not in kinds:
            continue
        lat = (rec.payload or {}).get("latency")
        if isinstance(lat, Mapping) and lat.get("median_ms") is not None:
            timed.append((rec, lat))
    probes = [float(lat["probe_ms"]) for _, lat in timed if lat.get("probe_ms") and lat.get("probe_units")]
    reference = statistics.median(probes) if probes else None
    out: list[Observation] = []
    for rec, lat in timed:
        scale = 1.0
        if speed == "probe" and reference is not None and lat.get("probe_ms") and lat.get("probe_units"):
            # probe_units * reference = the median at the reference speed; p10/p90 scale alike
            scale = float(lat["probe_units"]) * reference / float(lat["median_ms"])
        label, family = _label(rec)
        out.append(Observation(kind=rec.kind, key=rec.key, label=label, family=family,
                               trace=trace_of(rec, dtype, batch if rec.kind == "encoder" else 1, reparam),
                               seconds=scale * float(lat["median_ms"]) / 1e3,
                               p10_s=scale * float(lat.get("p10_ms") or lat["median_ms"]) / 1e3,
                               p90_s=scale * float(lat.get("p90_ms") or lat["median_ms"]) / 1e3))
    if not out:
        raise ValueError(f"store {st.url}, environment {key}: no timed measurement to calibrate on")
    return out, key, environment
