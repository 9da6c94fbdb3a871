"""`python -m explorer bench [quick=true] [out=FILE] [threads=N] [device=D] [runtimes=[...]] [stability=true]`

A markdown report of what this machine does with the measurement core: the fp32 GEMM roof,
FastViTHD throughput (eager, reparameterized, torch.compile) against that roof, the timer's
repeatability, and whole-model vs layer-sampled prefill. The measurements live in
:mod:`explorer.measure.bench` and :mod:`explorer.measure.runtime_bench`, the markdown in
:mod:`explorer.analysis.bench_report`; only this command writes the report (with ``out=``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from explorer.analysis.bench_report import render_markdown, render_runtime_markdown
from explorer.checks import check_bool, check_choice, check_int, check_number, check_output_file
from explorer.commands.common import error
from explorer.conf.schema import hydra_node, options_of, hydra_command
from explorer.data.atomic import atomic_path
from explorer.engine.backend import MeasureBackend
from explorer.measure.bench import bench_log, make_plan, run_bench
from explorer.measure.runtime_bench import LLM_VARIANTS, RuntimeReport, parse_encoders, run_runtime_bench
from explorer.measure.settings import WINDOWS, MeasureSettings

_STATE: dict[str, Any] = {"exit": 0}


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
        bench_log(f"{arm.name}: {arm.threads} thread(s), {len(arm.latency_ms)} settings, {len(arm.violations)} order "
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
        bench_log(f"{run.condition}-{run.index}: {run.threads} thread(s), {len(run.timings)} values, "
             f"load {run.load_before} -> {run.load_after}, {run.elapsed_s:.0f} s")

    report = run_coverage(space, settings, options, command=command, on_run=progress)
    text = "## Coverage of the re-measurement intervals\n\n" + report.markdown()
    print(text, end="")
    _write(args.out, text)
    return 0


def run_from_config(cfg: Any) -> int:
    try:
        args = options_of(BenchOptions, cfg)
        if args.out is not None:
            check_output_file("out", args.out)  # before minutes of benchmarks
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
                MeasureSettings(device="cpu", threads=args.threads, runtime=rt).check_on_machine()
            encoders = parse_encoders(",".join(args.encoders)) if args.encoders else None
            variants = None
            if args.llm_variants is not None:
                known = dict(LLM_VARIANTS)
                bad = [w for w in args.llm_variants if w not in known]
                if bad:
                    raise ValueError(f"invalid llm_variants={bad}: from {list(known)}")
                variants = tuple((w, known[w]) for w in args.llm_variants)
        else:
            make_plan(args.quick, args.threads, args.device).settings.check_on_machine()
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
