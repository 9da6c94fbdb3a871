"""The markdown of ``explorer bench``: the machine report and the runtime table (numbers in,
text out; the command writes it)."""
from __future__ import annotations

import datetime as _dt
import statistics
from typing import Optional

from explorer.intervals import compare, remeasure_interval
from explorer.measure.bench import BenchReport
from explorer.measure.costs import Timing
from explorer.measure.runtime_bench import RuntimeReport


def ratio_cell(timing: Timing, base: Timing) -> str:
    """``timing / base`` in bold when their re-measurement intervals (explorer.intervals, 90%)
    separate, else plain and ``(tied)``: a ratio the intervals cannot order is not claimed."""
    ratio = timing.median_ms / base.median_ms
    if compare(remeasure_interval(timing), remeasure_interval(base)) == "tied":
        return f"{ratio:.2f} (tied)"
    return f"**{ratio:.2f}**"


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


def render_runtime_markdown(report: RuntimeReport) -> str:
    """Latency ratios to eager per encoder and resolution, and the prefill variants per prompt length."""
    env, s = report.environment, report.settings
    runtimes = list(dict.fromkeys(r.runtime for r in report.encoder_rows))
    lines = [
        "## Runtimes: encoders and LLM prefill (one run)",
        "",
        f"- started: {report.started}; load average at the start: {report.loadavg}; at the end: {report.loadavg_end or report.loadavg}",
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
            ratios = [ratio_cell(got[l][0], base) if base and got.get(l, (None,))[0] else "-"
                      for l in labels[1:]]
            lines.append(f"| {p} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines) + "\n"


def _fmt_short(t: Optional[Timing]) -> str:
    if t is None:
        return "-"
    return f"{t.median_ms:.1f} [{t.p10_ms:.1f}-{t.p90_ms:.1f}]" + (" (noisy)" if t.noisy else "")


def _ort_version() -> str:
    from explorer.measure.settings import runtime_version

    return runtime_version("onnxruntime")
