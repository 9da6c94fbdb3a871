"""Device profiles: a device's roofs and efficiencies as data, one YAML file per device.

Shipped profiles live in ``explorer/devices/``; a user's own file works the same way (give its
path). Every number carries its source::

    name: nvidia-h100-sxm
    description: NVIDIA H100 SXM5 80 GB
    kind: gpu                       # cpu | gpu | npu
    cores: {value: 132, source: "..."}
    threads: null                   # CPU profiles: intra-op threads the numbers describe
    peak_flops:                     # dense FLOP/s per dtype (no sparsity)
      float32: {value: 6.7e13, source: "..."}
    memory_bandwidth: {value: 3.35e12, source: "..."}     # bytes/s
    overhead_s: {value: 5.0e-6, source: "..."}              # per operator call
    efficiency:                     # fraction of the roof each op class reaches
      source: "..."
      compute: {conv_dense: 0.6, conv_grouped: 0.1, matmul: 0.7, attention: 0.4}
      memory: {conv_dense: 0.7, conv_grouped: 0.7, matmul: 0.7, attention: 0.7, norm: 0.6,
               elementwise: 0.7, copy: 0.7}
    interval: {low: 0.5, high: 2.0, source: "..."}   # predicted x low .. x high
    calibration: null               # or what `explorer calibrate` fitted it from

:func:`load_profile` refuses a malformed file before anything is predicted, naming the file,
the field, the value and what is allowed; an unknown name lists the known ones.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml

from explorer.checks import is_int, is_number
from explorer.predict.opclass import COMPUTE_CLASSES, OP_CLASSES
from explorer.data.atomic import atomic_path

__all__ = ["Sourced", "DeviceProfile", "ProfileError", "DEVICES_DIR", "list_profiles", "load_profile",
           "profile_from_dict", "profile_to_dict", "write_profile"]

DEVICES_DIR = Path(__file__).resolve().parent.parent / "devices"
KINDS = ("cpu", "gpu", "npu")
DTYPES = ("float32", "float16", "bfloat16")


class ProfileError(ValueError):
    """A device profile that cannot be used: names the file, the field and what is allowed."""


@dataclass(frozen=True)
class Sourced:
    """A number and where it comes from (a vendor page, a measurement, a derivation, a fit)."""

    value: float
    source: str


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    kind: str
    cores: Sourced
    peak_flops: Mapping[str, Sourced]
    memory_bandwidth: Sourced
    overhead_s: Sourced
    compute_efficiency: Mapping[str, float]
    memory_efficiency: Mapping[str, float]
    efficiency_source: str
    interval_low: float
    interval_high: float
    interval_source: str
    threads: Optional[int] = None
    calibration: Optional[Mapping[str, Any]] = None
    path: Optional[str] = field(default=None, compare=False)

    def peak(self, dtype: str) -> float:
        """Dense FLOP/s for ``dtype``; a clear error when the profile has no number for it."""
        if dtype not in self.peak_flops:
            raise ProfileError(f"device profile {self.name!r} has no peak_flops.{dtype}: it gives "
                               f"{', '.join(sorted(self.peak_flops))}; choose one of those dtypes")
        return self.peak_flops[dtype].value

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def replace(self, **changes: Any) -> "DeviceProfile":
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------
# Reading and checking
# --------------------------------------------------------------------------------------------

def _where(origin: str, key: str) -> str:
    return f"{origin}: {key}"


def _sourced(data: Mapping[str, Any], key: str, origin: str, *, integer: bool = False) -> Sourced:
    if key not in data or data[key] is None:
        raise ProfileError(f"{_where(origin, key)} is missing: a mapping {{value: NUMBER, source: TEXT}}")
    item = data[key]
    if not isinstance(item, Mapping) or "value" not in item or "source" not in item:
        raise ProfileError(f"{_where(origin, key)}={item!r}: a mapping {{value: NUMBER, source: TEXT}} "
                           "(every number says where it comes from)")
    value, source = item["value"], item["source"]
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if not is_number(value) or value <= 0:
        raise ProfileError(f"{_where(origin, key + '.value')}={value!r}: a positive number")
    if integer and int(value) != value:
        raise ProfileError(f"{_where(origin, key + '.value')}={value!r}: a positive integer")
    if not isinstance(source, str) or not source.strip():
        raise ProfileError(f"{_where(origin, key + '.source')}={source!r}: a non-empty text saying where the "
                           "number comes from")
    return Sourced(float(value), source.strip())


def _fraction_map(data: Any, key: str, classes: tuple[str, ...], origin: str, upper: float) -> dict[str, float]:
    if not isinstance(data, Mapping):
        raise ProfileError(f"{_where(origin, key)}={data!r}: a mapping op class -> number; classes "
                           f"{', '.join(classes)}")
    unknown = sorted(set(data) - set(classes))
    if unknown:
        raise ProfileError(f"{_where(origin, key + '.' + str(unknown[0]))}: unknown op class; allowed: "
                           f"{', '.join(classes)}")
    out: dict[str, float] = {}
    for cls in classes:
        if cls not in data:
            raise ProfileError(f"{_where(origin, key + '.' + cls)} is missing: every class needs a value "
                               f"({', '.join(classes)})")
        v = data[cls]
        if not is_number(v) or not 0 < v <= upper:
            raise ProfileError(f"{_where(origin, key + '.' + cls)}={v!r}: a number in (0, {upper:g}]")
        out[cls] = float(v)
    return out


def profile_from_dict(data: Any, origin: str = "<profile>") -> DeviceProfile:
    """Check and build a profile; ``origin`` (a file name) starts every error message."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"{origin}: a device profile is a YAML mapping, got {type(data).__name__}")
    allowed = {"name", "description", "kind", "cores", "threads", "peak_flops", "memory_bandwidth", "overhead_s",
               "efficiency", "interval", "calibration"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ProfileError(f"{_where(origin, unknown[0])}: unknown field; allowed: {', '.join(sorted(allowed))}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ProfileError(f"{_where(origin, 'name')}={name!r}: a non-empty text")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ProfileError(f"{_where(origin, 'kind')}={kind!r}: one of {', '.join(KINDS)}")
    peaks_raw = data.get("peak_flops")
    if not isinstance(peaks_raw, Mapping) or not peaks_raw:
        raise ProfileError(f"{_where(origin, 'peak_flops')}={peaks_raw!r}: a mapping dtype -> "
                           f"{{value, source}} with at least one of {', '.join(DTYPES)}")
    bad = sorted(set(peaks_raw) - set(DTYPES))
    if bad:
        raise ProfileError(f"{_where(origin, 'peak_flops.' + str(bad[0]))}: unknown dtype; allowed: {', '.join(DTYPES)}")
    peaks = {dt: _sourced(peaks_raw, dt, f"{origin}: peak_flops") for dt in peaks_raw}
    threads = data.get("threads")
    if threads is not None and not (is_int(threads) and threads > 0):
        raise ProfileError(f"{_where(origin, 'threads')}={threads!r}: null or a positive integer")
    eff = data.get("efficiency")
    if not isinstance(eff, Mapping):
        raise ProfileError(f"{_where(origin, 'efficiency')}={eff!r}: a mapping with source, compute and memory")
    src = eff.get("source")
    if not isinstance(src, str) or not src.strip():
        raise ProfileError(f"{_where(origin, 'efficiency.source')}={src!r}: a non-empty text (priors or calibration)")
    compute = _fraction_map(eff.get("compute"), "efficiency.compute", COMPUTE_CLASSES, origin, 1.0)
    # Bytes are counted as if nothing stayed in cache between operators, so a class may beat the
    # DRAM roof on that count (up to 20x is accepted; more is a typo).
    memory = _fraction_map(eff.get("memory"), "efficiency.memory", OP_CLASSES, origin, 20.0)
    interval = data.get("interval")
    if not isinstance(interval, Mapping):
        raise ProfileError(f"{_where(origin, 'interval')}={interval!r}: a mapping {{low, high, source}}")
    low, high, isrc = interval.get("low"), interval.get("high"), interval.get("source")
    for key, v in (("low", low), ("high", high)):
        if not is_number(v) or v <= 0:
            raise ProfileError(f"{_where(origin, 'interval.' + key)}={v!r}: a positive factor")
    if not low <= 1.0 <= high:
        raise ProfileError(f"{_where(origin, 'interval')}: low={low!r}, high={high!r}: need low <= 1 <= high")
    if not isinstance(isrc, str) or not isrc.strip():
        raise ProfileError(f"{_where(origin, 'interval.source')}={isrc!r}: a non-empty text")
    calibration = data.get("calibration")
    if calibration is not None and not isinstance(calibration, Mapping):
        raise ProfileError(f"{_where(origin, 'calibration')}={calibration!r}: null or a mapping")
    return DeviceProfile(
        name=name.strip(), description=str(data.get("description") or ""), kind=kind,
        cores=_sourced(data, "cores", origin, integer=True), peak_flops=peaks,
        memory_bandwidth=_sourced(data, "memory_bandwidth", origin), overhead_s=_sourced(data, "overhead_s", origin),
        compute_efficiency=compute, memory_efficiency=memory, efficiency_source=src.strip(),
        interval_low=float(low), interval_high=float(high), interval_source=isrc.strip(), threads=threads,
        calibration=dict(calibration) if calibration is not None else None, path=None)


def list_profiles(devices_dir: Union[str, Path, None] = None) -> list[str]:
    """Names of the shipped profiles (file stems in ``explorer/devices/``)."""
    folder = Path(devices_dir) if devices_dir is not None else DEVICES_DIR
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_profile(name_or_path: Union[str, Path], devices_dir: Union[str, Path, None] = None) -> DeviceProfile:
    """A shipped profile by name, or a YAML file by path; checked before use."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        folder = Path(devices_dir) if devices_dir is not None else DEVICES_DIR
        path = folder / f"{text}.yaml"
        if not path.is_file():
            known = list_profiles(folder)
            raise ProfileError(f"unknown device={text!r}: known profiles are {', '.join(known)}; "
                               "or give the path of a profile YAML file of your own")
    if not path.is_file():
        raise ProfileError(f"device={text!r}: no such profile file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML ({exc})") from None
    profile = profile_from_dict(data, origin=str(path))
    return dataclasses.replace(profile, path=str(path))


def profile_to_dict(profile: DeviceProfile) -> dict[str, Any]:
    def s(x: Sourced) -> dict[str, Any]:
        return {"value": x.value, "source": x.source}

    return {
        "name": profile.name, "description": profile.description, "kind": profile.kind, "cores": s(profile.cores),
        "threads": profile.threads, "peak_flops": {k: s(v) for k, v in profile.peak_flops.items()},
        "memory_bandwidth": s(profile.memory_bandwidth), "overhead_s": s(profile.overhead_s),
        "efficiency": {"source": profile.efficiency_source, "compute": dict(profile.compute_efficiency),
                       "memory": dict(profile.memory_efficiency)},
        "interval": {"low": profile.interval_low, "high": profile.interval_high, "source": profile.interval_source},
        "calibration": dict(profile.calibration) if profile.calibration is not None else None,
    }


def write_profile(profile: DeviceProfile, path: Union[str, Path]) -> Path:
    """Write ``profile`` as YAML (the same format :func:`load_profile` reads)."""
    out = Path(path)
    text = yaml.safe_dump(profile_to_dict(profile), sort_keys=False, width=110)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out
