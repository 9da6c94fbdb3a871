"""``python -m explorer calibrate store=DIR``: fit a device profile to the measurements in a store.

The work lives in :mod:`explorer.predict` (observations, the fit, the measured roofs); this
module turns the config into those calls and writes the profile YAML. Bad input: exit 2 with
``error: ...``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, cast

from omegaconf import DictConfig

from explorer.checks import check_output_file
from explorer.commands.common import error
from explorer.conf.schema import hydra_command

_STATE: dict[str, Any] = {"exit": 0}


@dataclass
class CalibrateAppConfig:
    store: Optional[str] = None
    env: Optional[str] = None
    base: str = "measure"
    name: Optional[str] = None
    out: Optional[str] = None
    noise_sigma: float = 0.1
    prior_sigma: float = 1.0
    leave_one_out: bool = True


def _store_url(text: str) -> tuple[str, Optional[Path]]:
    from explorer.data.store import resolve_url, sqlite_file

    if "://" in text:
        return text, None
    url = resolve_url(text)  # a .db file, or a results folder's store.db
    db = cast(Path, sqlite_file(url))  # resolve_url makes a sqlite:/// URL of every path
    if not db.is_file():
        raise ValueError(f"invalid store={text!r}: no results database at {db} (run `explorer sweep` first)")
    return url, db.parent


def run_from_config(cfg: DictConfig) -> int:
    from explorer.measure.settings import MeasureSettings, cpu_model_name
    from explorer.predict.calibrate import FitOptions, calibrated_profile
    from explorer.predict.observations import observations_from_store
    from explorer.predict.priors import local_profile
    from explorer.predict.profile import ProfileError, load_profile, write_profile
    from explorer.predict.roof import measure_roof
    from explorer.data.store import Store

    if not cfg.get("store"):
        error("no store given: store=RESULTS_DIR (a folder with store.db, a .db file or a SQLAlchemy URL)")
        return 2
    try:
        options = FitOptions(noise_sigma=float(cfg.noise_sigma), prior_sigma=float(cfg.prior_sigma))
        url, folder = _store_url(str(cfg.store))
        out = Path(cfg.out) if cfg.get("out") else (folder or Path(".")) / "device_profile.yaml"
        check_output_file("out", out)  # before the roofs are measured and the fit runs
        store = Store(url, create=False)
        observations, env_key, environment = observations_from_store(store, cfg.get("env"))
        dtype = str(environment.get("dtype", "float32"))
        if cfg.base == "measure":
            if environment.get("device_type") != "cpu" or environment.get("device") != cpu_model_name():
                raise ValueError(f"invalid base='measure': the measurements are from {environment.get('device')!r} "
                                 f"({environment.get('device_type')}), not this machine's CPU ({cpu_model_name()!r}); "
                                 "give base=PROFILE for that device")
            threads = int(environment.get("threads") or 1)
            print(f"measuring this machine's roofs ({threads} thread(s), {dtype}) ...")
            roof = measure_roof(MeasureSettings(device="cpu", dtype=dtype, threads=threads, warmup_s=0.3,
                                                min_iters=5, max_iters=30, max_time_s=5.0))
            base = local_profile(roof, name=f"local-cpu-{threads}t", cores=os.cpu_count() or 1,
                                 description=f"{cpu_model_name()}, PyTorch CPU {dtype}, {threads} thread(s)")
            print(f"  GEMM {roof.gemm_flops / 1e9:.1f} GFLOP/s, copy {roof.bandwidth / 1e9:.1f} GB/s")
        else:
            base = load_profile(str(cfg.base))
        name = cfg.get("name") or (base.name if base.name.startswith("local-") else f"{base.name}-calibrated")
        print(f"fitting {len(observations)} measurements of environment {env_key} "
              f"({environment.get('device')}, {environment.get('threads')} thread(s), {dtype}) ...")
        profile = calibrated_profile(observations, base, name=name, dtype=dtype, env_key=env_key,
                                     environment=environment, store_url=url, options=options,
                                     leave_one_out=bool(cfg.leave_one_out))
    except (ProfileError, ValueError) as err:
        error(str(err))
        return 2
    try:
        write_profile(profile, out)
    except OSError as err:
        error(f"could not write {out}: {err.strerror or err}")
        return 1
    print("compute efficiency: " + ", ".join(f"{k} {v:.3f}" for k, v in profile.compute_efficiency.items()))
    print("memory efficiency:  " + ", ".join(f"{k} {v:.3f}" for k, v in profile.memory_efficiency.items()))
    print(f"overhead per call: {profile.overhead_s.value * 1e6:.1f} us; interval x{profile.interval_low:.3f} .. "
          f"x{profile.interval_high:.3f}")
    loo = (profile.calibration or {}).get("loo_median_abs_error")
    if loo is not None:
        print(f"leave-one-out median |error|: {loo * 100:.1f}%")
    print(f"profile written: {out}  (use it: python -m explorer predict +space=NAME device={out})")
    return 0


main = hydra_command("calibrate", run_from_config, _STATE, schema=lambda: CalibrateAppConfig)
