"""The runtime benchmark behind ``explorer bench runtimes=[...]``: encoders through eager /
torch.compile / ONNX Runtime (each export checked against eager first), and the LLM prefill's
variants (attention kernels, compile, the LM head, llama.cpp quantisations) at each prompt length.
Measurement only: it returns numbers and writes nothing.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from explorer.measure.bench import bench_log
from explorer.measure.contention import load_average_text
from explorer.measure.costs import Timing
from explorer.measure.prefill import measure_prefill
from explorer.measure.settings import Environment, MeasureSettings, current_environment
from explorer.measure.timing import time_callable
from explorer.models.llm import get_llm_spec

#: (encoder, resolutions) of the runtime table (``--runtimes``); ``--quick`` uses tiny shapes.
RUNTIME_ENCODERS: tuple[tuple[str, tuple[int, ...], dict[str, Any]], ...] = (
    ("fastvithd", (256, 512), {}),
    ("vit_l14_clip", (224, 336), {}),
    ("convnext_l", (256, 512), {}),
)
QUICK_RUNTIME_ENCODERS: tuple[tuple[str, tuple[int, ...], dict[str, Any]], ...] = (
    ("fastvithd", (64, 128), {"depths": [1, 1, 1, 1, 1], "widths": [16, 32, 64, 64, 128]}),
)
#: (label, settings changes) of the prefill variants timed at each prompt length.
LLM_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("sdpa", {}),
    ("eager attention", {"llm_attention": "eager"}),
    ("torch.compile (sdpa)", {"runtime": "compile"}),
    ("lm_head=all (sdpa)", {"lm_head": "all"}),
    ("llama.cpp f16", {"llm_runtime": "llamacpp", "llm_quant": "f16"}),
    ("llama.cpp q8_0", {"llm_runtime": "llamacpp", "llm_quant": "q8_0"}),
    ("llama.cpp q4_0", {"llm_runtime": "llamacpp", "llm_quant": "q4_0"}),
)


@dataclass
class RuntimeRow:
    encoder: str
    resolution: int
    runtime: str
    timing: Optional[Timing]
    rel_error: float = float("nan")
    export_s: float = float("nan")
    error: str = ""


@dataclass
class RuntimeReport:
    environment: Environment
    settings: MeasureSettings
    loadavg: str  # load average when the run started
    started: str = ""
    loadavg_end: str = ""  # load average at the last row
    encoder_rows: list[RuntimeRow] = field(default_factory=list)
    llm: str = ""
    llm_rows: list[tuple[int, str, Optional[Timing], str]] = field(default_factory=list)


def parse_encoders(text: str) -> tuple[tuple[str, tuple[int, ...], dict[str, Any]], ...]:
    """``"siglip_so400m@384,fastvithd@1024"`` -> the runtime table's encoder plan (default knobs)."""
    from explorer.models import list_encoders

    plan: dict[str, list[int]] = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, _, res = item.partition("@")
        if name not in list_encoders() or not res.isdigit() or int(res) <= 0:
            raise ValueError(f"invalid encoders item {item!r}: NAME@RESOLUTION with NAME one of {list_encoders()}")
        plan.setdefault(name, []).append(int(res))
    return tuple((n, tuple(r), {}) for n, r in plan.items())


def run_runtime_bench(quick: bool = False, threads: Optional[int] = None,
                      runtimes: tuple[str, ...] = ("eager", "compile", "onnxruntime"),
                      llm: str = "qwen2-0.5b", prompt_lengths: tuple[int, ...] = (48, 288),
                      encoders: Optional[tuple[tuple[str, tuple[int, ...], dict[str, Any]], ...]] = None,
                      llm_variants: Optional[tuple[tuple[str, dict[str, Any]], ...]] = None,
                      on_row: Optional[Callable[["RuntimeReport"], None]] = None) -> RuntimeReport:
    """Encoders in every runtime (exported per resolution, checked against eager, same protocol),
    then the LLM prefill's variants at each prompt length. Returns numbers; writes nothing
    (``on_row(report)`` is called after each row, e.g. to save a partial table).

    Order: every encoder at its first resolution, the prefill at the first prompt length, then
    the second ones, so an interrupted run still has a complete first column of each."""
    import time as _time

    from explorer.measure.encoder import prepare_exported
    from explorer.models import build_encoder

    if quick:
        settings = MeasureSettings(device="cpu", threads=threads, warmup_s=0.0, warmup_iters=1, min_iters=3,
                                   max_iters=5, max_time_s=1.0, target_rel_ci=0.05, preprocess="none")
        plan, spec, lengths = QUICK_RUNTIME_ENCODERS, get_llm_spec(llm).with_layers(2), (16, 32)
    else:
        settings = MeasureSettings(device="cpu", threads=threads, warmup_s=0.0, warmup_iters=1, min_iters=3,
                                   max_iters=10, max_time_s=6.0, target_rel_ci=0.05, preprocess="none")
        plan, spec, lengths = RUNTIME_ENCODERS, get_llm_spec(llm), prompt_lengths
    plan = encoders if encoders is not None else plan
    variants = LLM_VARIANTS if llm_variants is None else llm_variants
    for rt in runtimes:
        settings.replace(runtime=rt).check_on_machine()
    report = RuntimeReport(environment=current_environment(settings), settings=settings, loadavg=load_average_text(),
                           started=_dt.datetime.now().isoformat(timespec="seconds"))
    models = {name: build_encoder(name, **knobs).eval().reparameterize() for name, _, knobs in plan}
    report.llm = spec.name
    rounds = max([len(r) for _, r, _ in plan] + [len(lengths)])
    for i in range(rounds):
        for name, resolutions, _ in plan:
            if i >= len(resolutions):
                continue
            res = resolutions[i]
            x = torch.randn(settings.batch_size, 3, res, res, generator=torch.Generator().manual_seed(0))
            for rt in runtimes:
                bench_log(f"{name} {res}: {rt}")
                s = settings.replace(runtime=rt)
                t0 = _time.perf_counter()
                try:
                    fn, module, _, err = prepare_exported(models[name], x, s)
                    export_s = _time.perf_counter() - t0
                    timing = time_callable(fn, s, module=module)
                    report.encoder_rows.append(RuntimeRow(name, res, rt, timing, err, export_s))
                except Exception as exc:  # one runtime failing must not sink the table
                    report.encoder_rows.append(RuntimeRow(name, res, rt, None, error=f"{type(exc).__name__}: {exc}"))
                report.loadavg_end = load_average_text()
                if on_row is not None:
                    on_row(report)
        if i < len(lengths):
            p = lengths[i]
            for label, changes in variants:
                bench_log(f"prefill {spec.name} {p} tokens: {label}")
                try:
                    cost = measure_prefill(spec, p, settings.replace(**changes), method="whole", cross_check=False)
                    report.llm_rows.append((p, label, cost.latency, ""))
                except Exception as exc:
                    report.llm_rows.append((p, label, None, f"{type(exc).__name__}: {exc}"))
                report.loadavg_end = load_average_text()
                if on_row is not None:
                    on_row(report)
    report.loadavg_end = load_average_text()
    report.encoder_rows.sort(key=lambda r: ([n for n, _, _ in plan].index(r.encoder), r.resolution))
    return report
