"""Validation of the cost model on measured sweeps (the figures of docs/prediction.md).

    PYTHONPATH=$PWD python tools/predict_validation.py /tmp/i13/mixed /tmp/i13/mixed2 --splits 20

For each store: calibrate on a third of the design points (stratified, seeded), predict the rest,
print error figures; with two stores of the same space, also the run-to-run noise floor and the
figures against the per-measurement minimum of the two runs' medians (the less-loaded value).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys

import pandas as pd

from explorer.data import results
from explorer.predict.calibrate import FitOptions
from explorer.predict.observations import observations_from_store
from explorer.predict.profile import load_profile
from explorer.predict.validate import error_summary, prior_errors, split_validate
from explorer.data.store import Store


def point_table(store: Store) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    df = results.load(store, accuracy_metric=None)
    df = df[df.status == "ok"]
    factors = {p.key: [p.encoder_key, p.projector_key, p.prefill_key] for p in store.points()}
    return df, factors


def with_min(runs):
    """Per measurement the smallest of the runs' medians (contention only ever adds time)."""
    first = runs[0]
    best = {}
    for obs in runs:
        for o in obs:
            best[o.key] = min(best.get(o.key, o.seconds), o.seconds)
    return [dataclasses.replace(o, seconds=best[o.key]) for o in first]


def fmt(s: dict) -> str:
    return (f"n={s['n']:3d}  median|err|={s['median_abs'] * 100:5.1f}%  within25={s['within_25'] * 100:5.1f}%  "
            f"max|err|={s['max_abs'] * 100:6.1f}%")


def run(observations, points, factors, base, dtype, splits, label):
    ttft, enc, pre, rhos = [], [], [], []
    pairs = {"separated": [0, 0], "overlapping": [0, 0]}
    first = None
    for seed in range(splits):
        res = split_validate(observations, points, factors, base, dtype, seed=seed, options=FitOptions())
        s = res.summary()
        first = first or (res, s)
        ttft.append(s["ttft"]), enc.append(s["encoder"]), pre.append(s["prefill"])
        rhos.extend(v for v in s["spearman_by_resolution"].values() if not math.isnan(v))
        for kind, (right, total) in s["encoder_pairs_at_equal_resolution"].items():
            pairs[kind][0] += right
            pairs[kind][1] += total
    res, s = first
    print(f"\n== {label}: split seed 0: {s['calibration_points']} calibration points "
          f"({s['calibration_measurements']} measurements), {s['held_out_points']} held-out points")
    print("  TTFT      ", fmt(s["ttft"]))
    print("  encoder   ", fmt(s["encoder"]))
    print("  prefill   ", fmt(s["prefill"]))
    print("  projector ", fmt(s["projector"]))
    print("  spearman by resolution (held-out encoders):",
          {k: round(v, 3) for k, v in s["spearman_by_resolution"].items()})
    med = statistics.median
    print(f"  over {splits} splits: TTFT median|err| median {med(x['median_abs'] for x in ttft) * 100:.1f}% "
          f"[{min(x['median_abs'] for x in ttft) * 100:.1f}-{max(x['median_abs'] for x in ttft) * 100:.1f}], "
          f"within25 median {med(x['within_25'] for x in ttft) * 100:.0f}% "
          f"[{min(x['within_25'] for x in ttft) * 100:.0f}-{max(x['within_25'] for x in ttft) * 100:.0f}]; "
          f"encoder median|err| median {med(x['median_abs'] for x in enc) * 100:.1f}%; "
          f"prefill median|err| median {med(x['median_abs'] for x in pre) * 100:.1f}%; "
          f"spearman min {min(rhos) if rhos else float('nan'):.3f} median {med(rhos) if rhos else float('nan'):.3f}, "
          f"below 0.95 in {sum(r < 0.95 for r in rhos)} of {len(rhos)} (split, resolution) cases")
    print(f"  held-out encoder pairs at equal resolution, over {splits} splits, ordered as measured: "
          f"{pairs['separated'][0]}/{pairs['separated'][1]} of those whose measured p10-p90 ranges are apart, "
          f"{pairs['overlapping'][0]}/{pairs['overlapping'][1]} of those whose ranges overlap")
    return res


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--base", default=None, help="base profile (default: the stored roof profile next to the store)")
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--speed", default="measured", choices=["measured", "probe"],
                    help="probe: each median rescaled to the run's median machine speed (explorer.predict.observations)")
    ap.add_argument("--show", action="store_true", help="print the held-out rows of split 0")
    args = ap.parse_args(argv)
    base = load_profile(args.base)
    runs = []
    for path in args.stores:
        st = Store(path if "://" in path else f"sqlite:///{path}/store.db", create=False)
        obs, env_key, env = observations_from_store(st, speed=args.speed)
        points, factors = point_table(st)
        dtype = env["dtype"]
        print(f"store {path}: {len(obs)} measurements, {len(points)} points, env {env_key} ({env['device']}, "
              f"{env['threads']} thread(s), {dtype})")
        pe = prior_errors(obs, base, dtype)
        print(f"  uncalibrated priors ({base.name}): ", fmt(error_summary(pe)),
              f" median signed {statistics.median(pe) * 100:+.0f}%")
        res = run(obs, points, factors, base, dtype, args.splits, f"{path} medians")
        if args.show:
            print(res.factors.sort_values(["kind", "label"]).to_string())
            print(res.points.sort_values(["encoder", "resolution"]).to_string())
        runs.append((obs, points, factors, dtype))
    if len(runs) >= 2:
        (oa, pa, fa, dt), (ob, _, _, _) = runs[0], runs[1]
        b = {o.key: o.seconds for o in ob}
        noise = [b[o.key] / o.seconds - 1 for o in oa if o.key in b]
        print("\nrun-to-run (run 2 / run 1 - 1) of the same measurements:", fmt(error_summary(noise)))
        merged = with_min([r[0] for r in runs])  # split_validate sums each point's TTFT from these
        res = run(merged, pa, fa, base, dt, args.splits, f"min of the {len(runs)} runs' medians")
        if args.show:
            print(res.factors.sort_values(["kind", "label"]).to_string())
            print(res.points.sort_values(["encoder", "resolution"]).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
