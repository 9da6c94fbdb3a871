"""`python -m explorer bench [--quick] [--out FILE] [--threads N] [--device D]`

A markdown report of what this machine does with the measurement core: the fp32 GEMM roof,
FastViTHD throughput (eager, reparameterized, torch.compile) against that roof, the timer's
repeatability, and whole-model vs layer-sampled prefill. The library functions measure; only
this command writes the report (with ``--out``).
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..measure.costs import Timing
from ..measure.encoder import prepare_for_timing
from ..measure.flops import count_flops_torch
from ..measure.prefill import measure_prefill
from ..measure.settings import Environment, MeasureSettings, current_environment
from ..measure.timing import time_callable
from ..models.llm import get_llm_spec


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


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def gemm_roof(n: int, settings: MeasureSettings) -> tuple[float, Timing]:
    """fp32 ``n x n`` matmul throughput (GFLOP/s) at the settings' threads: the compute roof."""
    device = settings.resolve_device()
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    timing = time_callable(lambda: torch.mm(a, b), settings)
    return 2 * n ** 3 / (timing.median_ms * 1e-3) / 1e9, timing


def _time_encoder(model: torch.nn.Module, resolution: int, settings: MeasureSettings) -> Timing:
    batch = torch.randn(settings.batch_size, 3, resolution, resolution)
    fn, model, _ = prepare_for_timing(model, batch, settings)
    return time_callable(fn, settings, module=model)


def _encoder_gflops(model: torch.nn.Module, resolution: int) -> float:
    meta = copy.deepcopy(model).to("meta")
    return count_flops_torch(meta, torch.empty(1, 3, resolution, resolution, device="meta")).gflops


def bench_encoder(plan: BenchPlan, report: BenchReport, build: Callable[[], torch.nn.Module]) -> None:
    """FastViTHD at each resolution: eager (train form), reparameterized, and compiled."""
    settings = plan.settings.replace(compile=False)
    for res in plan.resolutions:
        model = build()
        gflops = _encoder_gflops(model, res)
        _log(f"fastvithd {res}: eager")
        report.encoder_rows.append(EncoderRow(res, "eager", gflops, _time_encoder(model, res, settings)))
        model.reparameterize()
        gflops = _encoder_gflops(model, res)
        _log(f"fastvithd {res}: reparameterized")
        report.encoder_rows.append(EncoderRow(res, "reparameterized", gflops, _time_encoder(model, res, settings)))
        if plan.compile:
            _log(f"fastvithd {res}: torch.compile (reparameterized)")
            try:
                timing = _time_encoder(model, res, settings.replace(compile=True))
                report.encoder_rows.append(EncoderRow(res, "compiled", gflops, timing))
            except Exception as err:  # a missing compiler must not sink the rest of the report
                report.encoder_rows.append(EncoderRow(res, "compiled", gflops, None, f"{type(err).__name__}: {err}"))
        else:
            report.encoder_rows.append(EncoderRow(res, "compiled", gflops, None, "skipped (--quick)"))


def bench_repeatability(plan: BenchPlan, report: BenchReport, build: Callable[[], torch.nn.Module]) -> None:
    """The same point (reparameterized FastViTHD) measured three times in a row."""
    model = build().reparameterize()
    for i in range(3):
        _log(f"repeatability {i + 1}/3")
        timing = _time_encoder(model, plan.repeat_resolution, plan.settings)
        report.repeat_medians.append(timing.median_ms)
        report.repeat_cvs.append(timing.cv)


def bench_prefill(plan: BenchPlan, report: BenchReport) -> None:
    """Whole-model vs layer-sampled prefill of the same LLM and prompt length."""
    spec = get_llm_spec(plan.llm)
    if plan.llm_layers is not None:
        spec = spec.with_layers(plan.llm_layers)
    _log(f"prefill {spec.name} ({spec.layers} layers), {plan.prefill_tokens} tokens: whole model")
    whole = measure_prefill(spec, plan.prefill_tokens, plan.settings, method="whole", cross_check=False)
    _log(f"prefill: layer-sampled (k={plan.sample_layers})")
    sampled = measure_prefill(spec, plan.prefill_tokens, plan.settings, method="sampled",
                              sample_layers=plan.sample_layers, cross_check=False)
    report.prefill = {"llm": spec.name, "layers": spec.layers, "tokens": plan.prefill_tokens,
                      "gflops": whole.gflops, "whole": whole.latency, "sampled": sampled.latency,
                      "method": sampled.method}


def run_bench(quick: bool = False, threads: Optional[int] = None, device: str = "auto") -> BenchReport:
    """Run every section; returns the numbers (renders nothing, writes nothing)."""
    plan = make_plan(quick, threads, device)
    plan.settings.validate()
    report = BenchReport(environment=current_environment(plan.settings), plan=plan)
    from ..models import build_encoder

    _log(f"GEMM {plan.gemm_n}x{plan.gemm_n} fp32")
    report.gemm_gflops_s, report.gemm_timing = gemm_roof(plan.gemm_n, plan.settings)
    build = lambda: build_encoder("fastvithd")  # noqa: E731
    bench_encoder(plan, report, build)
    bench_repeatability(plan, report, build)
    bench_prefill(plan, report)
    return report


def _fmt_t(t: Optional[Timing]) -> str:
    if t is None:
        return "-"
    flag = " (noisy)" if t.noisy else ""
    return f"{t.median_ms:.1f} [{t.p10_ms:.1f}-{t.p90_ms:.1f}], cv {t.cv:.1%}, n={t.n}{flag}"


def render_markdown(report: BenchReport) -> str:
    """The report as markdown (timings: median [p10-p90] ms, coefficient of variation, samples)."""
    env, plan = report.environment, report.plan
    lines = [
        "# explorer bench" + (" (quick)" if plan.resolutions == (128,) else ""),
        "",
        f"- date: {_dt.datetime.now().isoformat(timespec='seconds')}",
        f"- device: {env.device} ({env.device_type}), threads {env.threads}, dtype {env.dtype}, "
        f"torch {env.torch_version}, environment key `{env.key}`",
        f"- timing: median [p10-p90] ms; stop when the 95% CI of the median is within "
        f"+-{plan.settings.target_rel_ci:.0%} or after {plan.settings.max_iters} samples / "
        f"{plan.settings.max_time_s:g} s (then marked noisy)",
        "",
        "## GEMM roof",
        "",
        f"fp32 {plan.gemm_n}x{plan.gemm_n} matmul: **{report.gemm_gflops_s:.1f} GFLOP/s** "
        f"({_fmt_t(report.gemm_timing)})",
        "",
        "## FastViTHD throughput (batch 1)",
        "",
        "| resolution | variant | GFLOPs | latency ms | GFLOP/s | of roof |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in report.encoder_rows:
        if row.timing is None:
            lines.append(f"| {row.resolution} | {row.variant} | {row.gflops:.2f} | {row.error or '-'} | - | - |")
            continue
        rate = row.gflops * plan.settings.batch_size / (row.timing.median_ms * 1e-3)
        roof = rate / report.gemm_gflops_s if report.gemm_gflops_s > 0 else float("nan")
        lines.append(f"| {row.resolution} | {row.variant} | {row.gflops:.2f} | {_fmt_t(row.timing)} | "
                     f"{rate:.1f} | {roof:.0%} |")
    meds = report.repeat_medians
    if meds:
        spread = (max(meds) - min(meds)) / statistics.median(meds)
        lines += [
            "",
            "## Repeatability",
            "",
            f"Reparameterized FastViTHD at {plan.repeat_resolution}, measured three times in a row: medians "
            + ", ".join(f"{m:.1f}" for m in meds) + " ms; within-run cv "
            + ", ".join(f"{c:.1%}" for c in report.repeat_cvs)
            + f"; **spread of medians (max-min)/median: {spread:.1%}**.",
        ]
    pre = report.prefill
    if pre:
        whole, sampled = pre["whole"], pre["sampled"]
        ratio = sampled.median_ms / whole.median_ms if whole and sampled else float("nan")
        lines += [
            "",
            "## Prefill: whole model vs layer-sampled",
            "",
            f"{pre['llm']} ({pre['layers']} layers), {pre['tokens']} tokens, {pre['gflops']:.1f} GFLOPs:",
            "",
            "| method | latency ms |",
            "| --- | --- |",
            f"| whole-model | {_fmt_t(whole)} |",
            f"| {pre['method']} | {_fmt_t(sampled)} |",
            "",
            f"**layer-sampled / whole = {ratio:.3f}**",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m explorer bench",
        description="Markdown report of this machine: fp32 GEMM roof, FastViTHD throughput (eager, "
                    "reparameterized, torch.compile), timer repeatability, whole-model vs layer-sampled prefill.")
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute (used by tests)")
    parser.add_argument("--out", metavar="FILE", help="also write the markdown report to FILE")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    args = parser.parse_args(argv)
    try:
        make_plan(args.quick, args.threads, args.device).settings.validate()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = render_markdown(run_bench(args.quick, args.threads, args.device))
    print(text, end="")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0
