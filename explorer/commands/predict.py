"""``python -m explorer predict +space=NAME device=PROFILE``: predicted results for a device not at hand.

The work lives in :mod:`explorer.predict` (traces, profiles, the roofline, predicted tables);
this module turns the composed config into those calls, writes the table and report, and maps
bad input to exit status 2 with ``error: ...`` and no traceback.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from explorer.checks import check_output_file, check_output_folder
from explorer.commands.common import error, space_source
from explorer.data.atomic import atomic_path
from explorer.conf.schema import hydra_command

_STATE: dict[str, Any] = {"exit": 0}


@dataclass
class PredictAppConfig:
    space: Any = None
    device: Optional[str] = None
    llm_device: Optional[str] = None
    dtype: str = "float32"
    batch_size: int = 1
    reparameterize: bool = True
    out: Optional[str] = None
    measured: Optional[str] = None
    report: bool = True
    spaces_dir: Optional[str] = None
    space_file: Optional[str] = None


_SHOW = ["encoder", "knobs", "resolution", "llm", "visual_tokens", "encoder_latency_ms", "prefill_latency_ms",
         "ttft_ms", "ttft_low_ms", "ttft_high_ms"]


def _check_like_a_sweep(space: Any) -> None:
    """What a sweep's plan refuses about the space itself (its size, prompts beyond an LLM's
    positions), refused here too (SpaceError); the memory of this machine is not the question."""
    import dataclasses

    from explorer.engine.backend import MeasureBackend
    from explorer.engine.sweep import default_settings, plan_sweep

    backend = dataclasses.replace(MeasureBackend(), encoder_gflops=None, real_models=False)
    plan_sweep(space, default_settings(space, device="cpu"), None, backend=backend)


def run_from_config(cfg: DictConfig) -> int:
    from explorer.predict import PredictOptions, ProfileError, list_profiles, load_profile, predict_space
    from explorer.data.space import SpaceError, load_space

    t0 = time.monotonic()
    choice, source = space_source(cfg)
    node = cfg.get("space")
    if node is None:
        error("no search space chosen: add +space=NAME or space_file=PATH")
        return 2
    if not cfg.get("device"):
        error(f"no device chosen: add device=PROFILE; known profiles are {', '.join(list_profiles())} "
             "(or the path of a profile YAML file)")
        return 2
    try:
        options = PredictOptions(dtype=str(cfg.dtype), batch_size=int(cfg.batch_size),
                                 reparameterize=bool(cfg.reparameterize))
        profile = load_profile(str(cfg.device))
        llm_profile = load_profile(str(cfg.llm_device)) if cfg.get("llm_device") else None
        space = load_space(node, name=None if node.get("name") else choice, source_name=source)
        _check_like_a_sweep(space)
        label = profile.name if llm_profile is None else f"{profile.name}+{llm_profile.name}"
        out = Path(cfg.out) if cfg.get("out") else Path("results") / space.name / f"predicted-{label}"
        check_output_folder("out", out)  # before the traces
        for name in ("predicted.csv", "predicted.html", "measured_vs_predicted.csv"):
            check_output_file("out", out / name)
        df = predict_space(space, profile, llm_profile=llm_profile, options=options)
    except (SpaceError, ProfileError, ValueError) as err:
        error(str(err))
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "predicted.csv") as tmp:
            df.to_csv(tmp, index=False)
    except OSError as err:
        error(f"could not write {out / 'predicted.csv'}: {err.strerror or err}")
        return 1
    print(f"predicted {len(df)} design points of {space.name!r} on {label} ({options.dtype}) "
          f"in {time.monotonic() - t0:.1f} s; latency_source={df.latency_source.iloc[0] if len(df) else '-'}")
    cal = "calibrated" if profile.calibrated else "NOT calibrated (priors; see docs/prediction.md)"
    print(f"profile {profile.name}: {cal}; interval x{profile.interval_low:g} .. x{profile.interval_high:g}")
    fastest = df.sort_values("ttft_ms").groupby(["llm", "resolution"], as_index=False).head(1)
    print(f"the fastest design point per LLM and resolution ({len(fastest)} of {len(df)}; every row is in "
          f"{out / 'predicted.csv'}):")
    print(fastest.sort_values(["llm", "resolution"])[_SHOW].to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    if cfg.get("measured"):
        from explorer.data import results
        from explorer.predict import mark_measured, side_by_side

        try:
            measured = mark_measured(results.load(str(cfg.measured), space=space.name, accuracy_metric=None))
        except (FileNotFoundError, ValueError) as err:
            error(str(err))
            return 2
        both = side_by_side(measured[measured.status == "ok"], df)
        with atomic_path(out / "measured_vs_predicted.csv") as tmp:
            both.to_csv(tmp, index=False)
        if len(both):
            err = (both.ttft_ratio - 1).abs()
            print(f"measured vs predicted on {len(both)} points: median |error| {err.median() * 100:.1f}%, "
                  f"{(err <= 0.25).mean() * 100:.0f}% within +-25% -> {out / 'measured_vs_predicted.csv'}")
    if cfg.report and len(df):
        from explorer.analysis.report import write_report

        page = write_report(df, out / "predicted.html",
                            title=f"explorer: {space.name} PREDICTED on {label} ({df.latency_source.iloc[0]})")
        print(f"report: {page}")
    print(f"table: {out / 'predicted.csv'}")
    return 0


main = hydra_command("predict", run_from_config, _STATE, schema=lambda: PredictAppConfig)
