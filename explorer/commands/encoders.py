"""`python -m explorer encoders`: the zoo at a glance (inference-form parameters, channels, tokens).

The ``model`` column says whether the default configuration is a published model or our
extrapolation (``explorer.data.reference.EXTRAPOLATED``; published accuracy never joins the latter).
"""
from __future__ import annotations

import argparse

import torch

from explorer.models import build_encoder, list_encoders
from explorer.data.reference import extrapolation

RESOLUTIONS = (256, 512, 768, 1024)


def encoder_table(names: list[str] | None = None, resolutions: tuple[int, ...] = RESOLUTIONS) -> list[dict]:
    """One row per encoder, built on the meta device so even the 7B-class towers cost no memory."""
    rows = []
    for name in names or list_encoders():
        with torch.device("meta"):
            enc = build_encoder(name).eval().reparameterize()
        row = {"name": name, "params_m": enc.num_params() / 1e6, "out_channels": enc.out_channels,
               "downsample": enc.downsample}
        row.update({f"tokens@{r}": enc.num_tokens(r) for r in resolutions})
        row["model"] = "extrapolated*" if extrapolation(name) else "published"
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    headers = list(rows[0])
    cells = [[f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in cells])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m explorer encoders", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"encoders to list (default: all of {list_encoders()})")
    args = parser.parse_args(argv)
    try:
        rows = encoder_table(args.names or None)
    except ValueError as err:
        parser.error(str(err))
    print(format_table(rows))
    notes = sorted({f"* {r['name']}: {extrapolation(r['name'])}" for r in rows if extrapolation(r["name"])})
    if notes:
        print("\n" + "\n".join(notes))
    return 0
