"""Prior efficiencies per kind of device, and the profile of the machine at hand from its measured roofs.

The priors are assumptions (documented as such in every profile that uses them): rough fractions
of the roof that eager kernels of each class reach. Calibration replaces them with fitted values;
docs/prediction.md reports how far off the CPU priors are on the machine at hand.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping

from explorer.measure.contention import load_average_text
from explorer.predict.profile import DeviceProfile, Sourced
from explorer.predict.roof import Roof

__all__ = ["PRIORS", "PRIOR_SOURCE", "local_profile"]

PRIOR_SOURCE = ("prior: assumption (not measured on this device): typical fractions of the roof for eager kernels "
                "of each class; run the calibration space on the device and `explorer calibrate` to replace them")

PRIORS: Mapping[str, Mapping[str, Any]] = {
    "cpu": {"compute": {"conv_dense": 0.5, "conv_grouped": 0.05, "matmul": 0.6, "attention": 0.3},
            "memory": {c: 1.0 for c in ("conv_dense", "conv_grouped", "matmul", "attention", "norm", "elementwise",
                                        "copy")},
            "overhead_s": 1.0e-5,
            "overhead_source": "prior: assumption, about 10 us per eager PyTorch operator call on a CPU (dispatcher + "
                               "kernel launch); replace by `explorer calibrate`"},
}


def local_profile(roof: Roof, name: str, description: str, cores: int) -> DeviceProfile:
    """A CPU profile whose roofs are ``roof`` (measured now) and whose efficiencies are the CPU priors."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = (f"measured by explorer.predict.roof.measure_roof on this machine, {roof.threads} thread(s), {when}, "
             f"load average {load_average_text()}")
    prior = PRIORS["cpu"]
    return DeviceProfile(
        name=name, description=description, kind="cpu",
        cores=Sourced(float(cores), "os.cpu_count() on this machine"),
        peak_flops={roof.dtype: Sourced(roof.gemm_flops, f"{roof.gemm_n}^3 {roof.dtype} matmul (cv {roof.gemm_cv:.2f}); {where}")},
        memory_bandwidth=Sourced(roof.bandwidth, f"copy of {roof.copy_mb:g} MB, read + write bytes "
                                 f"(cv {roof.copy_cv:.2f}); {where}"),
        overhead_s=Sourced(prior["overhead_s"], prior["overhead_source"]),
        compute_efficiency=dict(prior["compute"]), memory_efficiency=dict(prior["memory"]),
        efficiency_source=PRIOR_SOURCE, interval_low=0.5, interval_high=2.0,
        interval_source="prior: an uncalibrated roofline is trusted to a factor of 2 either way",
        threads=roof.threads, calibration=None)
