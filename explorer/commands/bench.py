"""`python -m explorer bench [--quick] [--out FILE] [--threads N] [--device D]`

A markdown report of what this machine does with the measurement core: the fp32 GEMM roof,
FastViTHD throughput (eager, reparameterized, torch.compile) against that roof, the timer's
repeatability, and whole-model vs layer-sampled prefill. The library functions measure; only
this command writes the report (with ``--out``).
"""
from __future__ import annotations

import copy
import datetime as _dt
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch

from explorer.checks import check_bool, check_choice, check_int, check_number
from explorer.commands.common import error
from explorer.conf.schema import hydra_node, options_of, hydra_command
from explorer.data.atomic import atomic_path
from explorer.engine.backend import MeasureBackend

from ..measure.costs import Timing
from ..measure.encoder import prepare_for_timing
from ..measure.flops import count_flops_torch
from ..measure.prefill import measure_prefill
from ..measure.settings import WINDOWS, Environment, MeasureSettings, current_environment
from ..measure.timing import time_callable
from ..models.llm import get_llm_spec

_STATE: dict[str, Any] = {"exit": 0}


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



# --------------------------------------------------------------------------------------------
# Runtimes: encoders through eager / torch.compile / ONNX Runtime, the prefill's LLM runtimes

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
    loadavg: str
    started: str = ""
    encoder_rows: list[RuntimeRow] = field(default_factory=list)
    llm: str = ""
    llm_rows: list[tuple[int, str, Optional[Timing], str]] = field(default_factory=list)


def _loadavg() -> str:
    try:
        with open("/proc/loadavg", encoding="utf-8") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def parse_encoders(text: str) -> tuple[tuple[str, tuple[int, ...], dict[str, Any]], ...]:
    """``"siglip_so400m@384,fastvithd@1024"`` -> the runtime table's encoder plan (default knobs)."""
    from ..models import list_encoders

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

    from ..measure.encoder import prepare_exported
    from ..models import build_encoder

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
        settings.replace(runtime=rt).validate()
    report = RuntimeReport(environment=current_environment(settings), settings=settings, loadavg=_loadavg(),
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
                _log(f"{name} {res}: {rt}")
                s = settings.replace(runtime=rt)
                t0 = _time.perf_counter()
                try:
                    fn, module, _, err = prepare_exported(models[name], x, s)
                    export_s = _time.perf_counter() - t0
                    timing = time_callable(fn, s, module=module)
                    report.encoder_rows.append(RuntimeRow(name, res, rt, timing, err, export_s))
                except Exception as exc:  # one runtime failing must not sink the table
                    report.encoder_rows.append(RuntimeRow(name, res, rt, None, error=f"{type(exc).__name__}: {exc}"))
                if on_row is not None:
                    on_row(report)
        if i < len(lengths):
            p = lengths[i]
            for label, changes in variants:
                _log(f"prefill {spec.name} {p} tokens: {label}")
                try:
                    cost = measure_prefill(spec, p, settings.replace(**changes), method="whole", cross_check=False)
                    report.llm_rows.append((p, label, cost.latency, ""))
                except Exception as exc:
                    report.llm_rows.append((p, label, None, f"{type(exc).__name__}: {exc}"))
                if on_row is not None:
                    on_row(report)
    report.encoder_rows.sort(key=lambda r: ([n for n, _, _ in plan].index(r.encoder), r.resolution))
    return report


def render_runtime_markdown(report: RuntimeReport) -> str:
    """Latency ratios to eager per encoder and resolution, and the prefill variants per prompt length."""
    env, s = report.environment, report.settings
    runtimes = list(dict.fromkeys(r.runtime for r in report.encoder_rows))
    lines = [
        "## Runtimes: encoders and LLM prefill (one run)",
        "",
        f"- started: {report.started}; load average at the start: {report.loadavg}; at the end: {_loadavg()}",
        f"- device: {env.device} ({env.device_type}), threads {env.threads}, dtype {env.dtype}, torch "
        f"{env.torch_version}" + (f", {_ort_version()}" if "onnxruntime" in runtimes else ""),
        f"- timing: median [p10-p90] ms, batch {s.batch_size}, reparameterized; stop at +-{s.target_rel_ci:.0%} CI "
        f"or {s.max_iters} samples / {s.max_time_s:g} s; every non-eager output checked against eager first "
        "(relative max-abs error, fp32)",
        "",
        "| encoder | px | " + " | ".join(f"{rt} ms" for rt in runtimes) + " | "
        + " | ".join(f"{rt} / eager" for rt in runtimes if rt != "eager") + " | max rel. error | export s |",
        "| --- | --- | " + " | ".join("---" for _ in runtimes) + " | "
        + " | ".join("---" for rt in runtimes if rt != "eager") + " | --- | --- |",
    ]
    keys = list(dict.fromkeys((r.encoder, r.resolution) for r in report.encoder_rows))
    for enc, res in keys:
        rows = {r.runtime: r for r in report.encoder_rows if (r.encoder, r.resolution) == (enc, res)}
        eager = rows.get("eager")
        cells = [_fmt_short(rows[rt].timing) if rows.get(rt) and rows[rt].timing else
                 (rows[rt].error[:60] if rows.get(rt) else "-") for rt in runtimes]
        ratios = []
        for rt in runtimes:
            if rt == "eager":
                continue
            r = rows.get(rt)
            ok = r is not None and r.timing is not None and eager is not None and eager.timing is not None
            ratios.append(ratio_cell(r.timing, eager.timing) if ok else "-")  # type: ignore[union-attr]
        checked = [r for r in rows.values() if r.timing is not None and r.runtime != "eager"]
        err = f"{max(r.rel_error for r in checked):.1e}" if checked else "-"
        exports = ", ".join(f"{r.runtime} {r.export_s:.0f}" for r in checked) or "-"
        lines.append(f"| {enc} | {res} | " + " | ".join(cells) + " | " + " | ".join(ratios) + f" | {err} | {exports} |")
    if report.llm_rows:
        labels = list(dict.fromkeys(label for _, label, _, _ in report.llm_rows))
        lines += [
            "",
            f"{report.llm} prefill (whole model, random weights), ratios to `sdpa`:",
            "",
            "| prompt tokens | " + " | ".join(f"{l} ms" for l in labels) + " | "
            + " | ".join(f"{l} / sdpa" for l in labels[1:]) + " |",
            "| --- | " + " | ".join("---" for _ in labels) + " | " + " | ".join("---" for _ in labels[1:]) + " |",
        ]
        for p in dict.fromkeys(p for p, _, _, _ in report.llm_rows):
            got = {label: (t, e) for q, label, t, e in report.llm_rows if q == p}
            base = got.get(labels[0], (None, ""))[0]
            cells = [_fmt_short(got[l][0]) if got.get(l, (None,))[0] else (got.get(l, (None, "-"))[1][:60] or "-")
                     for l in labels]
            ratios = [ratio_cell(got[l][0], base) if base and got.get(l, (None,))[0] else "-" for l in labels[1:]]
            lines.append(f"| {p} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines) + "\n"


def ratio_cell(timing: Timing, base: Timing) -> str:
    """``timing / base`` in bold when their re-measurement intervals (explorer.intervals, 90%)
    separate, else plain and ``(tied)``: a ratio the intervals cannot order is not claimed."""
    from explorer.intervals import compare, remeasure_interval

    ratio = timing.median_ms / base.median_ms
    if compare(remeasure_interval(timing), remeasure_interval(base)) == "tied":
        return f"{ratio:.2f} (tied)"
    return f"**{ratio:.2f}**"


def _fmt_short(t: Optional[Timing]) -> str:
    if t is None:
        return "-"
    return f"{t.median_ms:.1f} [{t.p10_ms:.1f}-{t.p90_ms:.1f}]" + (" (noisy)" if t.noisy else "")


def _ort_version() -> str:
    from ..measure.settings import runtime_version

    return runtime_version("onnxruntime")

@dataclass(frozen=True)
class BenchOptions:
    """``explorer bench`` (key=value): this machine's report, or ``runtimes=[...]`` for runtime ratios.

    ``quick``: small sizes, about a minute; ``out``: also write the markdown report there;
    ``threads``: CPU threads (null: torch's default); ``device``: auto | cpu | cuda | cuda:N | mps;
    ``runtimes``: instead, encoders through these runtimes and the LLM prefill's variants as
    latency ratios (CPU); with it, ``encoders`` (NAME@RES list), ``prompt_lengths`` and
    ``llm_variants`` (labels) narrow the table. ``stability``: instead, the stability benchmark
    (explorer.engine.stability): ``space`` (default ``stability``: nine FastViTHD settings of known
    order) swept quiet, beside ``neighbours`` busy loops, and quiet again; ``threads`` fixes the
    thread count of every arm (null: the sweep's policy, the cores left free); ``window``: the
    timings' window in every arm (``own`` | ``group``; null: the space's, else ``own``; see
    ``measure.window``). ``coverage``: instead, the coverage benchmark (explorer.engine.coverage):
    ``space`` swept ``runs`` times quiet and, with ``neighbours`` > 0, as many times beside that many
    busy loops (alternating, ``gap_s`` seconds apart); per level, the share of later medians inside
    the first run's re-measurement interval, with the intervals' median width and load averages.
    """

    SECTION: ClassVar[str] = "bench"

    quick: bool = False
    out: Optional[str] = None
    threads: Optional[int] = None
    device: str = "auto"
    runtimes: Any = None
    encoders: Any = None
    prompt_lengths: Any = (48, 288)
    llm_variants: Any = None
    stability: bool = False
    neighbours: int = 1
    space: str = "stability"
    window: Optional[str] = None
    coverage: bool = False
    runs: int = 3
    gap_s: float = 0.0

    def __post_init__(self) -> None:
        check_bool("quick", self.quick)
        check_bool("stability", self.stability)
        check_bool("coverage", self.coverage)
        check_int("runs", self.runs, low=2, high=100)
        check_number("gap_s", self.gap_s, low=0.0, high=3600.0)
        check_int("neighbours", self.neighbours, low=0, high=256)
        check_int("threads", self.threads, low=1, optional=True, none_means="torch's default")
        if self.window is not None:
            check_choice("window", self.window, WINDOWS)
        for name in ("runtimes", "encoders", "llm_variants"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, tuple(v.strip() for v in value.split(",") if v.strip()))
            elif value is not None:
                object.__setattr__(self, name, tuple(str(v) for v in value))
        lengths = self.prompt_lengths if isinstance(self.prompt_lengths, (list, tuple)) else [self.prompt_lengths]
        object.__setattr__(self, "prompt_lengths", tuple(check_int("prompt_lengths", v, low=1) for v in lengths))


def _write(path: Optional[str], text: str) -> None:
    if path:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")


def _run_stability(args: BenchOptions) -> int:
    from explorer.engine.stability import run_stability
    from explorer.engine.sweep.plan import default_settings, resolve_space
    from explorer.data.space import SpaceError

    try:
        space = resolve_space(args.space, MeasureBackend())
        settings = default_settings(space, threads=args.threads, device=args.device)
        if args.window is not None:
            settings = settings.replace(window=args.window)
    except (ValueError, SpaceError) as err:
        error(str(err))
        return 2
    command = "python -m explorer bench stability=true" + "".join(
        f" {k}={v}" for k, v in (("neighbours", args.neighbours), ("threads", args.threads), ("space", args.space),
                                 ("window", args.window))
        if v is not None and not (k == "space" and v == "stability"))

    def progress(arm: Any) -> None:
        _log(f"{arm.name}: {arm.threads} thread(s), {len(arm.latency_ms)} settings, {len(arm.violations)} order "
             f"violations, {arm.contended} contended, {arm.elapsed_s:.0f} s ({arm.machine[:80]})")

    report = run_stability(space, settings, neighbours=args.neighbours, command=command, on_arm=progress)
    text = "## Stability\n\n" + report.markdown()
    print(text, end="")
    _write(args.out, text)
    return 0


def _run_coverage(args: BenchOptions) -> int:
    from explorer.data.space import SpaceError
    from explorer.engine.coverage import CoverageOptions, run_coverage
    from explorer.engine.stability import ENCODERS_ONLY
    from explorer.engine.sweep.plan import default_settings, resolve_space

    try:
        space = resolve_space(args.space, ENCODERS_ONLY)
        settings = default_settings(space, threads=args.threads, device=args.device)
        if args.window is not None:
            settings = settings.replace(window=args.window)
        options = CoverageOptions(runs=args.runs, neighbours=args.neighbours, gap_s=args.gap_s)
    except (ValueError, SpaceError) as err:
        error(str(err))
        return 2
    command = "python -m explorer bench coverage=true" + "".join(
        f" {k}={v}" for k, v in (("runs", args.runs), ("neighbours", args.neighbours), ("threads", args.threads),
                                 ("gap_s", args.gap_s), ("space", args.space), ("window", args.window))
        if v is not None and not (k == "space" and v == "stability") and not (k == "gap_s" and not v))

    def progress(run: Any) -> None:
        _log(f"{run.condition}-{run.index}: {run.threads} thread(s), {len(run.timings)} values, "
             f"load {run.load_before} -> {run.load_after}, {run.elapsed_s:.0f} s")

    report = run_coverage(space, settings, options, command=command, on_run=progress)
    text = "## Coverage of the re-measurement intervals\n\n" + report.markdown()
    print(text, end="")
    _write(args.out, text)
    return 0


def run_from_config(cfg: Any) -> int:
    try:
        args = options_of(BenchOptions, cfg)
    except ValueError as err:
        error(str(err))
        return 2
    if args.coverage:
        return _run_coverage(args)
    if args.stability:
        return _run_stability(args)
    try:
        if args.runtimes is not None:
            names = args.runtimes or ("eager", "compile", "onnxruntime")
            for rt in names:
                MeasureSettings(device="cpu", threads=args.threads, runtime=rt).validate()
            encoders = parse_encoders(",".join(args.encoders)) if args.encoders else None
            variants = None
            if args.llm_variants is not None:
                known = dict(LLM_VARIANTS)
                bad = [w for w in args.llm_variants if w not in known]
                if bad:
                    raise ValueError(f"invalid llm_variants={bad}: from {list(known)}")
                variants = tuple((w, known[w]) for w in args.llm_variants)
        else:
            make_plan(args.quick, args.threads, args.device).settings.validate()
    except ValueError as err:
        error(str(err))
        return 2
    if args.runtimes is not None:
        def save(partial: RuntimeReport) -> None:
            _write(args.out, render_runtime_markdown(partial) + "\n(partial: the run is still going)\n")

        text = render_runtime_markdown(run_runtime_bench(args.quick, args.threads, names,
                                                         prompt_lengths=args.prompt_lengths, encoders=encoders,
                                                         llm_variants=variants, on_row=save))
    else:
        text = render_markdown(run_bench(args.quick, args.threads, args.device))
    print(text, end="")
    _write(args.out, text)
    return 0


main = hydra_command("bench", run_from_config, _STATE, config_name="tool", schema=lambda: hydra_node(BenchOptions), spaces=False)
