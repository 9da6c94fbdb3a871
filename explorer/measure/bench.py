"""The machine benchmark behind ``explorer bench``: the fp32 GEMM roof, FastViTHD throughput
(eager, reparameterized, torch.compile), the timer's repeatability, and whole-model vs
layer-sampled prefill. Measurement only: it returns numbers and writes nothing
(:mod:`explorer.analysis.bench_report` renders them, the command writes the file).
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from explorer.measure.costs import Timing
from explorer.measure.encoder import prepare_for_timing
from explorer.measure.flops import count_flops_torch
from explorer.measure.prefill import measure_prefill
from explorer.measure.settings import Environment, MeasureSettings, current_environment
from explorer.measure.timing import time_callable
from explorer.models.llm import get_llm_spec


@dataclass(frozen=True)
class BenchPlan:
    """Sizes of one benchmark run (``quick`` shrinks everything to about a minute)."""

    gemm_n: int
    resolutions: tuple[int, ...]
    compile: bool
    repeat_resolution: int
    llm: str
    llm_layers: Optional[int]  # None = the real depth
    prefill_tokens: int
    sample_layers: int
    settings: MeasureSettings


def make_plan(quick: bool, threads: Optional[int], device: str) -> BenchPlan:
    if quick:
        settings = MeasureSettings(device=device, threads=threads, warmup_s=0.0, warmup_iters=1,
                                   min_iters=3, max_iters=5, max_time_s=1.5, target_rel_ci=0.05)
        return BenchPlan(gemm_n=512, resolutions=(128,), compile=False, repeat_resolution=128,
                         llm="qwen2-0.5b", llm_layers=4, prefill_tokens=64, sample_layers=2,
                         settings=settings)
    settings = MeasureSettings(device=device, threads=threads, warmup_s=1.0, warmup_iters=2,
                               min_iters=5, max_iters=50, max_time_s=30.0)
    return BenchPlan(gemm_n=2048, resolutions=(256, 512, 1024), compile=True, repeat_resolution=256,
                     llm="qwen2-0.5b", llm_layers=None, prefill_tokens=320, sample_layers=2,
                     settings=settings)


@dataclass
class EncoderRow:
    resolution: int
    variant: str  # eager | reparameterized | compiled
    gflops: float
    timing: Optional[Timing]
    error: str = ""


@dataclass
class BenchReport:
    environment: Environment
    plan: BenchPlan
    gemm_gflops_s: float = 0.0
    gemm_timing: Optional[Timing] = None
    encoder_rows: list[EncoderRow] = field(default_factory=list)
    repeat_medians: list[float] = field(default_factory=list)
    repeat_cvs: list[float] = field(default_factory=list)
    prefill: dict[str, Any] = field(default_factory=dict)


def bench_log(msg: str) -> None:
    """Progress of a benchmark, on stderr (the report itself goes to stdout or a file)."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def gemm_roof(n: int, settings: MeasureSettings) -> tuple[float, Timing]:
    """fp32 ``n x n`` matmul throughput (GFLOP/s) at the settings' threads: the compute roof."""
    device = settings.resolve_device()
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    timing = time_callable(lambda: torch.mm(a, b), settings)
    return 2 * n ** 3 / (timing.median_ms * 1e-3) / 1e9, timing


def time_encoder(model: torch.nn.Module, resolution: int, settings: MeasureSettings) -> Timing:
    """Latency of ``model`` on a random batch at ``resolution``, prepared as a sweep prepares it."""
    batch = torch.randn(settings.batch_size, 3, resolution, resolution)
    fn, model, _ = prepare_for_timing(model, batch, settings)
    return time_callable(fn, settings, module=model)


def encoder_gflops(model: torch.nn.Module, resolution: int) -> float:
    """GFLOPs of one image through ``model``, counted on a meta copy."""
    meta = copy.deepcopy(model).to("meta")
    return count_flops_torch(meta, torch.empty(1, 3, resolution, resolution, device="meta")).gflops


def bench_encoder(plan: BenchPlan, report: BenchReport, build: Callable[[], torch.nn.Module]) -> None:
    """FastViTHD at each resolution: eager (train form), reparameterized, and compiled."""
    settings = plan.settings.replace(compile=False)
    for res in plan.resolutions:
        model = build()
        gflops = encoder_gflops(model, res)
        bench_log(f"fastvithd {res}: eager")
        report.encoder_rows.append(EncoderRow(res, "eager", gflops, time_encoder(model, res, settings)))
        model.reparameterize()
        gflops = encoder_gflops(model, res)
        bench_log(f"fastvithd {res}: reparameterized")
        report.encoder_rows.append(EncoderRow(res, "reparameterized", gflops, time_encoder(model, res, settings)))
        if plan.compile:
            bench_log(f"fastvithd {res}: torch.compile (reparameterized)")
            try:
                timing = time_encoder(model, res, settings.replace(compile=True))
                report.encoder_rows.append(EncoderRow(res, "compiled", gflops, timing))
            except Exception as err:  # a missing compiler must not sink the rest of the report
                report.encoder_rows.append(EncoderRow(res, "compiled", gflops, None, f"{type(err).__name__}: {err}"))
        else:
            report.encoder_rows.append(EncoderRow(res, "compiled", gflops, None, "skipped (--quick)"))


def bench_repeatability(plan: BenchPlan, report: BenchReport, build: Callable[[], torch.nn.Module]) -> None:
    """The same point (reparameterized FastViTHD) measured three times in a row."""
    model = build().reparameterize()
    for i in range(3):
        bench_log(f"repeatability {i + 1}/3")
        timing = time_encoder(model, plan.repeat_resolution, plan.settings)
        report.repeat_medians.append(timing.median_ms)
        report.repeat_cvs.append(timing.cv)


def bench_prefill(plan: BenchPlan, report: BenchReport) -> None:
    """Whole-model vs layer-sampled prefill of the same LLM and prompt length."""
    spec = get_llm_spec(plan.llm)
    if plan.llm_layers is not None:
        spec = spec.with_layers(plan.llm_layers)
    bench_log(f"prefill {spec.name} ({spec.layers} layers), {plan.prefill_tokens} tokens: whole model")
    whole = measure_prefill(spec, plan.prefill_tokens, plan.settings, method="whole", cross_check=False)
    bench_log(f"prefill: layer-sampled (k={plan.sample_layers})")
    sampled = measure_prefill(spec, plan.prefill_tokens, plan.settings, method="sampled",
                              sample_layers=plan.sample_layers, cross_check=False)
    report.prefill = {"llm": spec.name, "layers": spec.layers, "tokens": plan.prefill_tokens,
                      "gflops": whole.gflops, "whole": whole.latency, "sampled": sampled.latency,
                      "method": sampled.method}


def run_bench(quick: bool = False, threads: Optional[int] = None, device: str = "auto") -> BenchReport:
    """Run every section; returns the numbers (renders nothing, writes nothing)."""
    plan = make_plan(quick, threads, device)
    plan.settings.check_on_machine()
    report = BenchReport(environment=current_environment(plan.settings), plan=plan)
    from explorer.models import build_encoder

    bench_log(f"GEMM {plan.gemm_n}x{plan.gemm_n} fp32")
    report.gemm_gflops_s, report.gemm_timing = gemm_roof(plan.gemm_n, plan.settings)
    build = lambda: build_encoder("fastvithd")  # noqa: E731
    bench_encoder(plan, report, build)
    bench_repeatability(plan, report, build)
    bench_prefill(plan, report)
    return report
