"""`python -m explorer bench --quick` runs end to end and writes its report only with --out."""
import re

import pytest

from explorer.commands import bench


def test_bad_bench_settings_exit_2(capsys):
    assert bench.main(["quick=true", "threads=0"]) == 2
    assert "threads=0" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_quick_report(tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert bench.main(["quick=true", "threads=1", "device=cpu", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    text = out.read_text()
    assert text == printed
    for heading in ("## GEMM roof", "## FastViTHD throughput", "## Repeatability",
                    "## Prefill: whole model vs layer-sampled"):
        assert heading in text
    assert re.search(r"matmul: \*\*[0-9.]+ GFLOP/s\*\*", text)
    assert "| 128 | eager |" in text and "| 128 | reparameterized |" in text
    assert "threads 1" in text
    ratio = float(re.search(r"layer-sampled / whole = ([0-9.]+)", text).group(1))
    assert 0.3 < ratio < 3.0  # same model measured two ways: same order of magnitude even when noisy
    assert len(re.findall(r"medians ([0-9.]+), ([0-9.]+), ([0-9.]+) ms", text)) == 1


def _timing(ms: float):
    from explorer.measure.costs import Timing

    return Timing(median_ms=ms, p10_ms=ms * 0.9, p90_ms=ms * 1.1, mean_ms=ms, cv=0.01, n=5, ci_low_ms=ms,
                  ci_high_ms=ms, noisy=False)


def test_runtime_table_renders_ratios_to_eager_and_sdpa():
    """The renderer alone (no measurement): ratios, errors and load averages come from the report."""
    from explorer.analysis.bench_report import render_runtime_markdown
    from explorer.measure.runtime_bench import RuntimeReport, RuntimeRow
    from explorer.measure.settings import Environment, MeasureSettings

    env = Environment(device="cpu-x", device_type="cpu", dtype="float32", threads=1, torch_version="2",
                      settings_digest="d")
    report = RuntimeReport(environment=env, settings=MeasureSettings(device="cpu", threads=1), loadavg="1.00 1.00 1.00",
                           started="t0", loadavg_end="2.00 2.00 2.00", llm="qwen2-0.5b")
    report.encoder_rows += [RuntimeRow("fastvithd", 256, "eager", _timing(10.0)),
                            RuntimeRow("fastvithd", 256, "compile", _timing(5.0), rel_error=1e-6, export_s=3.0),
                            RuntimeRow("fastvithd", 256, "onnxruntime", None, error="ImportError: no onnxruntime")]
    report.llm_rows += [(48, "sdpa", _timing(20.0), ""), (48, "eager attention", _timing(30.0), "")]
    text = render_runtime_markdown(report)
    assert "load average at the start: 1.00 1.00 1.00; at the end: 2.00 2.00 2.00" in text
    row = next(line for line in text.splitlines() if line.startswith("| fastvithd | 256 |"))
    assert "**0.50**" in row and "ImportError: no onnxruntime" in row and "1.0e-06" in row
    llm_row = next(line for line in text.splitlines() if line.startswith("| 48 |"))
    assert llm_row.endswith("| **1.50** |")
