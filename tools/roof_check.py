"""Quiet-machine check: GEMM roof vs FastViTHD@1024 reparameterized, fp32, 2 threads, one run."""
from explorer.measure.bench import gemm_roof, time_encoder
from explorer.measure.settings import MeasureSettings
from explorer.models import build_encoder
s = MeasureSettings(device="cpu", threads=2, warmup_s=1.0, warmup_iters=2, min_iters=5, max_iters=20, max_time_s=20.0)
roof, t = gemm_roof(2048, s)
m = build_encoder("fastvithd").eval().reparameterize()
lat = time_encoder(m, 1024, s)
gf = 486.71
print(f"roof {roof:.1f} GFLOP/s (median {t.median_ms:.1f} ms cv {t.cv:.3f} n {t.n}); fastvithd@1024 {lat.median_ms:.0f} ms "
      f"[{lat.p10_ms:.0f}-{lat.p90_ms:.0f}] cv {lat.cv:.3f} n {lat.n} noisy {lat.noisy} -> {gf / lat.median_ms * 1e3:.1f} GFLOP/s = {gf / lat.median_ms * 1e3 / roof:.0%} of roof")
roof2, t2 = gemm_roof(2048, s)
print(f"roof again {roof2:.1f}")
