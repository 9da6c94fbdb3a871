"""A deterministic stand-in backend for real encoder families, and the store rows it leaves.

Used by tests/test_engine_golden.py: the default space swept with these fakes must leave exactly the
rows in tests/data/default_space_rows.json, which were written by the sweep engine as it stood
before its redesign (commit "Golden store rows of the default space from the pre-redesign engine").
The fakes take shapes from the real model zoo (meta-device builds) and derive every cost from the
inputs alone, so the rows depend only on what the engine plans and stores.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from explorer.measure.costs import EncoderCost, PrefillCost, ProjectorCost
from explorer.data.space import encoder_shape
from sweep_fakes import timing

GOLDEN = Path(__file__).with_name("data") / "default_space_rows.json"


def measure_encoder(name: str, knobs: dict[str, Any], resolution: int, settings: Any, time: bool = True) -> EncoderCost:
    s = encoder_shape(name, knobs, resolution)
    return EncoderCost(encoder=name, knobs=dict(knobs), resolution=resolution, visual_tokens=s.visual_tokens,
                       out_channels=s.out_channels, params_m=s.params_m, gflops=s.params_m * resolution / 1000,
                       latency=timing(s.params_m * resolution / 500), peak_mem_mb=float(resolution), peak_mem_method="fake")


def measure_projector(in_channels: int, hidden: int, tokens: int, settings: Any, time: bool = True) -> ProjectorCost:
    macs = tokens * (in_channels * hidden + hidden * hidden)
    return ProjectorCost(in_channels=in_channels, hidden=hidden, tokens=tokens,
                         params_m=(in_channels * hidden + hidden * hidden) / 1e6, gflops=2 * macs / 1e9,
                         latency=timing(macs / 1e8))


def measure_prefill(llm: str, tokens: int, settings: Any, time: bool = True) -> PrefillCost:
    return PrefillCost(llm=llm, tokens=tokens, params_m=float(len(llm) * 100), gflops=tokens * 1.5,
                       latency=timing(tokens * 0.5 + len(llm)), method="whole-model")


def store_rows(store: Any) -> dict[str, Any]:
    """Every stored row of the measurements and points tables, without ids and timestamps."""
    meas = sorted((m.kind, m.key, m.env_key, json.dumps(m.inputs, sort_keys=True), m.status,
                   json.dumps(m.payload, sort_keys=True), m.error) for m in store.measurements())
    points = sorted((p.space, p.point.key, json.dumps(p.point.to_dict(), sort_keys=True), p.encoder_key,
                     p.projector_key, p.prefill_key, p.visual_tokens) for p in store.points())
    return {"measurements": [list(r) for r in meas], "points": [list(r) for r in points]}
