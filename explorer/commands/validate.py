"""``python -m explorer validate [encoder=fastvithd] [resolutions=[256,512]] [llm=qwen2-0.5b] ...``

Assembles the real VLM (registry encoder -> mlp2x_gelu projector -> transformers LLM with random
weights, ``generate(max_new_tokens=1)`` from ``inputs_embeds``), times it end to end, and compares
that with the factorised TTFT (encoder + projector + prefill [+ preprocessing], each timed on its
own) measured in the same run, per resolution. Exit 0 when every ratio is within
``tolerance``, 1 when one is not, 2 on bad input. The work is
:func:`explorer.measure.e2e.validate_point`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from explorer.checks import check_output_file, is_int, is_number
from explorer.commands.common import error
from explorer.conf.schema import MeasureOverrides, enter_body, measure_overrides, run_hydra_command
from explorer.data.atomic import atomic_path

_STATE: dict[str, Any] = {"exit": 0}


@dataclass
class ValidateAppConfig:
    encoder: str = "fastvithd"
    knobs: Any = None  # the encoder family's knobs, e.g. knobs={width_mult:0.5}
    resolutions: Any = field(default_factory=lambda: [256, 512])
    llm: str = "qwen2-0.5b"
    text_tokens: int = 32
    tolerance: float = 0.10
    out: Optional[str] = None  # also write the markdown table to this file
    device: Optional[str] = None
    measure: MeasureOverrides = field(default_factory=MeasureOverrides)  # type: ignore[valid-type]


def render(checks: list[Any], settings: Any, env: Any) -> str:
    """Markdown table of the checks."""
    lines = [
        f"- device: {env.device} ({env.device_type}), threads {env.threads}, dtype {env.dtype}, torch "
        f"{env.torch_version}, runtime {env.runtime}, lm_head {settings.lm_head}, attention {settings.llm_attention}, "
        f"preprocess {settings.preprocess}" + (f" ({settings.source_image}, {settings.preprocess_fit})"
                                               if settings.preprocess != "none" else ""),
        "",
        "| encoder | px | LLM | tokens (vis+text) | preprocess ms | encoder ms | projector ms | prefill ms | "
        "factorised ms | end-to-end ms | factorised / e2e (median [p10-p90] of paired rounds) | within | "
        "ratio's 95% CI | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in checks:
        ms = {k: t.median_ms for k, t in c.parts.items()}
        prep = f"{ms['preprocess']:.1f}" if "preprocess" in ms else "-"
        lines.append(
            f"| {c.encoder} | {c.resolution} | {c.llm} | {c.visual_tokens}+{c.text_tokens} | {prep} | "
            f"{ms['encoder']:.1f} | {ms['projector']:.2f} | {ms['prefill']:.1f} | {c.factorised.median_ms:.1f} | "
            f"{c.end_to_end.median_ms:.1f} [{c.end_to_end.p10_ms:.1f}-{c.end_to_end.p90_ms:.1f}] | "
            f"**{c.ratio:.3f}** [{c.ratio_p10:.3f}-{c.ratio_p90:.3f}], {c.rounds} rounds | "
            f"{'yes' if c.ok else 'NO'} (+-{c.tolerance:.0%}) | [{c.ratio_ci_low:.3f}-{c.ratio_ci_high:.3f}] | "
            f"{_verdict_text(c)} |")
    return "\n".join(lines) + "\n"


def _verdict_text(check: Any) -> str:
    """What the ratio's CI supports: within / outside the tolerance or not settled, and whether the
    factorised sum differs from the end-to-end time at all (``not significant`` when its CI holds 1)."""
    differs = {"faster": "factorised lower", "slower": "factorised higher", "tied": "difference not significant"}
    return f"{check.verdict} (+-{check.tolerance:.0%}); {differs[check.difference]}"


def run_from_config(cfg: DictConfig) -> int:
    from explorer.measure.e2e import assemble_vlm, validate_point
    from explorer.measure.settings import MeasureSettings, current_environment
    from explorer.models.llm import get_llm_spec

    try:
        values = measure_overrides(cfg)
        settings = MeasureSettings(**values).check_on_machine()
        if settings.effective_runtime != "eager":
            raise ValueError(f"invalid measure.runtime={settings.effective_runtime!r}: validate compares the eager "
                             "torch VLM end to end")
        spec = get_llm_spec(cfg.llm)
        knobs = OmegaConf.to_container(cfg.knobs, resolve=True) if OmegaConf.is_config(cfg.knobs) else {}
        if not isinstance(knobs, dict):
            raise ValueError(f"invalid knobs={knobs!r}: a mapping of the encoder's knobs, e.g. knobs={{width_mult:0.5}}")
        resolutions = OmegaConf.to_container(cfg.resolutions, resolve=True) if OmegaConf.is_config(cfg.resolutions) \
            else cfg.resolutions
        if isinstance(resolutions, int):
            resolutions = [resolutions]
        if not resolutions or not all(is_int(r) and r > 0 for r in resolutions):
            raise ValueError(f"invalid resolutions={resolutions!r}: a list of positive integers, e.g. [256,512]")
        tol = cfg.tolerance
        if not is_number(tol) or not 0 < tol < 1:
            raise ValueError(f"invalid tolerance={tol!r}: a fraction in (0, 1), e.g. 0.1 for +-10%")
        if not is_int(cfg.text_tokens) or cfg.text_tokens < 0:
            raise ValueError(f"invalid text_tokens={cfg.text_tokens!r}: an integer >= 0")
        from explorer.models import build_encoder

        import torch

        with torch.device("meta"):
            enc = build_encoder(cfg.encoder, **dict(knobs))
        for r in resolutions:
            enc.num_tokens(r)
        if cfg.out:
            check_output_file("out", cfg.out)
        env = current_environment(settings)
    except ValueError as err:
        error(str(err))
        return 2
    print(f"validate: {cfg.encoder} {knobs or ''} at {resolutions} px -> {spec.name}, {cfg.text_tokens} text tokens "
          f"(factorised vs end-to-end, one run)", flush=True)
    vlm = assemble_vlm(cfg.encoder, knobs, spec, settings)
    checks = []
    for r in resolutions:
        check = validate_point(cfg.encoder, knobs, int(r), spec, int(cfg.text_tokens), settings,
                               tolerance=float(tol), vlm=vlm)
        print(f"  {r} px: factorised {check.factorised.median_ms:.1f} ms, end-to-end {check.end_to_end.median_ms:.1f} ms, "
              f"ratio {check.ratio:.3f} [{check.ratio_ci_low:.3f}-{check.ratio_ci_high:.3f}]: {_verdict_text(check)}",
              flush=True)
        checks.append(check)
    text = render(checks, settings, env)
    print(text, end="")
    if cfg.out:
        with atomic_path(cfg.out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return 0 if all(c.ok for c in checks) else 1


@hydra.main(version_base="1.3", config_path=None, config_name="validate")
def _hydra_main(cfg: DictConfig) -> None:
    refused = enter_body(_STATE, "validate")
    if refused is not None:
        _STATE["exit"] = refused
        return
    try:
        code = run_from_config(cfg)
    except KeyboardInterrupt:
        code = 130
    _STATE["exit"] = code


def main(argv: list[str]) -> int:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="validate_schema", node=ValidateAppConfig)
    cs.store(name="validate", node={
        "defaults": ["validate_schema", "_self_", {"override hydra/job_logging": "none"},
                     {"override hydra/hydra_logging": "none"}],
        "hydra": {"run": {"dir": "."}, "output_subdir": None, "job": {"chdir": False}},
    })
    return run_hydra_command("validate", _hydra_main, argv, _STATE)
