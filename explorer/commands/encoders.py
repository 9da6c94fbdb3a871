"""``explorer encoders [names=[fastvithd,vit_l14]]``: the zoo at a glance (inference-form parameters, channels, tokens).

The ``model`` column says whether the default configuration is a published model or our
extrapolation (``explorer.data.reference.EXTRAPOLATED``; published accuracy never joins the latter).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from explorer.checks import check_choice
from explorer.commands.common import error
from explorer.conf.schema import hydra_node, options_of, hydra_command

from explorer.models import build_encoder, list_encoders
from explorer.data.reference import extrapolation

_STATE: dict[str, Any] = {"exit": 0}
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


@dataclass(frozen=True)
class EncodersOptions:
    """``explorer encoders [names=[a,b]]``: the zoo at a glance (default: every registered encoder)."""

    SECTION: ClassVar[str] = "encoders"

    names: Any = None

    def __post_init__(self) -> None:
        names = self.names
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        if names is not None:
            known = list_encoders()
            for n in names:
                check_choice("names", n, known)
            object.__setattr__(self, "names", tuple(names))


def run_from_config(cfg: Any) -> int:
    try:
        opts = options_of(EncodersOptions, cfg)
        rows = encoder_table(list(opts.names) if opts.names else None)
    except ValueError as err:
        error(str(err))
        return 2
    print(format_table(rows))
    notes = sorted({f"* {r['name']}: {extrapolation(r['name'])}" for r in rows if extrapolation(r["name"])})
    if notes:
        print("\n" + "\n".join(notes))
    return 0


main = hydra_command("encoders", run_from_config, _STATE, config_name="tool", schema=lambda: hydra_node(EncodersOptions), spaces=False)
