"""How to measure (device, dtype, threads, protocol caps) and where a value was measured.

:class:`MeasureSettings` is validated before any model is built, so a typo fails in
milliseconds instead of after minutes of work. :class:`Environment` is stamped on every stored
value; its ``key`` keeps values from different machines or settings from being mixed silently.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch

from explorer.checks import OptionError, check_bool, check_choice, check_int, check_number, is_number, require

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# Settings that change the measured value itself (not merely its noise); they enter the digest.
_DIGEST_FIELDS = ("dtype", "batch_size", "channels_last", "compile", "reparameterize")




def usable_cores() -> int:
    """Logical cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@dataclass(frozen=True)
class MeasureSettings:
    """Everything that decides how a latency is measured.

    ``device``: ``auto`` (cuda if available, else mps, else cpu), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
    ``threads``: ``None`` leaves torch's default; on CPU an integer is set while measuring and
    restored afterwards. Warm-up runs until both ``warmup_s`` and ``warmup_iters`` are reached;
    timing stops when the 95% CI of the median is within ``target_rel_ci`` of it, or at
    ``max_iters`` / ``max_time_s`` (then the timing is flagged noisy), never before ``min_iters``.
    """

    device: str = "auto"
    dtype: str = "float32"
    threads: Optional[int] = None
    batch_size: int = 1
    channels_last: bool = False
    compile: bool = False
    reparameterize: bool = True
    warmup_s: float = 0.5
    warmup_iters: int = 2
    min_iters: int = 5
    max_iters: int = 200
    max_time_s: float = 30.0
    target_rel_ci: float = 0.02

    def validate(self) -> "MeasureSettings":
        """Raise ValueError naming the field, the value and what is allowed; returns self."""
        require(isinstance(self.device, str) and bool(_DEVICE_RE.fullmatch(self.device)), "measure.device", self.device,
                "one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
        check_choice("measure.dtype", self.dtype, DTYPES)
        cores = usable_cores()
        check_int("measure.threads", self.threads, low=1, high=cores, optional=True,
                  none_means=f"torch's default; this machine has {cores} logical cores")
        check_int("measure.batch_size", self.batch_size, low=1, high=4096)
        for name in ("channels_last", "compile", "reparameterize"):
            check_bool(f"measure.{name}", getattr(self, name))
        check_number("measure.warmup_s", self.warmup_s, low=0, high=3600)
        check_int("measure.warmup_iters", self.warmup_iters, low=0, high=100_000)
        check_int("measure.min_iters", self.min_iters, low=1, high=100_000)
        check_int("measure.max_iters", self.max_iters, low=self.min_iters, high=1_000_000)
        check_number("measure.max_time_s", self.max_time_s, low=0, low_open=True, high=86_400)
        require(is_number(self.target_rel_ci) and 0 < self.target_rel_ci < 1, "measure.target_rel_ci", self.target_rel_ci,
                "a fraction in (0, 1), e.g. 0.02 for +-2%")
        device = self.resolve_device()
        self._check_device(device)
        return self

    def _check_device(self, device: torch.device) -> None:
        if self.compile and device.type == "cpu" and not any(
                shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            raise OptionError("measure.compile", self.compile, "False on this machine: torch.compile on CPU needs a C++ "
                       "compiler (g++ or clang++) and none is on PATH")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise OptionError("measure.device", self.device, "a device this machine has: CUDA is not available "
                           "(use 'cpu' or 'auto')")
            index = device.index or 0
            if index >= torch.cuda.device_count():
                raise OptionError("measure.device", self.device, f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
            if self.dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
                raise OptionError("measure.dtype", self.dtype, f"'float32' or 'float16' on {torch.cuda.get_device_name(index)} "
                           "(no bfloat16 support)")
        elif device.type == "mps":
            if not _mps_available():
                raise OptionError("measure.device", self.device, "a device this machine has: MPS is not available "
                           "(use 'cpu' or 'auto')")

    def resolve_device(self) -> torch.device:
        """The concrete torch device: ``auto`` picks cuda, then mps, then cpu."""
        if self.device == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", torch.cuda.current_device())
            if _mps_available():
                return torch.device("mps")
            return torch.device("cpu")
        if not isinstance(self.device, str) or not _DEVICE_RE.fullmatch(self.device):
            raise OptionError("measure.device", self.device, "one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
        if self.device == "cuda":
            return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in DTYPES:
            raise OptionError("measure.dtype", self.dtype, f"one of {', '.join(map(repr, DTYPES))}")
        return DTYPES[self.dtype]

    def effective_threads(self) -> int:
        """Threads a CPU measurement runs with (the explicit setting, else torch's current default)."""
        return self.threads if self.threads is not None else torch.get_num_threads()

    def replace(self, **changes: Any) -> "MeasureSettings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def thread_scope(settings: MeasureSettings) -> Iterator[int]:
    """Set torch's intra-op threads for a CPU measurement and restore them afterwards."""
    before = torch.get_num_threads()
    device = settings.resolve_device()
    change = device.type == "cpu" and settings.threads is not None and settings.threads != before
    if change:
        torch.set_num_threads(settings.threads)  # type: ignore[arg-type]
    try:
        yield torch.get_num_threads()
    finally:
        if change:
            torch.set_num_threads(before)


def cpu_model_name() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux), falling back to platform info."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                    name = line.split(":", 1)[1].strip()
                    if name:
                        return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def device_name(device: torch.device) -> str:
    """Human-readable name of the device that runs the measurement."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()}, {platform.mac_ver()[0] or 'macOS'})"
    return cpu_model_name()


@dataclass(frozen=True)
class Environment:
    """Where and how a value was measured; ``key`` identifies comparable measurements."""

    device: str  # device name, e.g. "AMD EPYC" or "NVIDIA H100 80GB HBM3"
    device_type: str  # "cpu" | "cuda" | "mps"
    dtype: str
    threads: int
    torch_version: str
    settings_digest: str  # digest of the settings that change the measured value

    @property
    def key(self) -> str:
        """Stable digest of every field (same machine + torch + settings -> same key)."""
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def settings_digest(settings: MeasureSettings) -> str:
    """Digest of the measurement-relevant settings (dtype, batch, layout, compile, reparam).

    Protocol caps (warm-up, iteration and time limits, target CI) change how precisely a value
    is known, not the value, so they are left out; device and threads are Environment fields.
    """
    payload = {name: getattr(settings, name) for name in _DIGEST_FIELDS}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def current_environment(settings: MeasureSettings) -> Environment:
    """The Environment a measurement with ``settings`` runs in on this machine (validates first)."""
    settings.validate()
    device = settings.resolve_device()
    threads = settings.effective_threads() if device.type == "cpu" else torch.get_num_threads()
    return Environment(
        device=device_name(device),
        device_type=device.type,
        dtype=settings.dtype,
        threads=int(threads),
        torch_version=torch.__version__,
        settings_digest=settings_digest(settings),
    )
