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
