"""How to measure (device, dtype, threads, protocol caps) and where a value was measured.

:class:`MeasureSettings` checks its values when it is made (an invalid one cannot exist) and
what depends on this machine in :meth:`MeasureSettings.check_on_machine`, before any model is
built, so a typo fails in milliseconds instead of after minutes of work. :class:`Environment` is stamped on every stored
value; its ``key`` keeps values from different machines or settings from being mixed silently.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
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
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# Settings that change the measured value itself (not merely its noise); they enter the digest.
_DIGEST_FIELDS = ("dtype", "batch_size", "channels_last", "compile", "reparameterize")
# Settings added later that also change a measured value. They enter the digest only when they
# differ from their default, so every environment key stored before they existed stays valid.
_DIGEST_IF_SET = ("runtime", "lm_head", "llm_attention", "preprocess", "source_image", "preprocess_fit",
                  "llm_runtime", "llm_quant")

#: Encoder/projector runtimes: name -> (module to import, pip extra that installs it or None).
RUNTIMES: dict[str, tuple[Optional[str], Optional[str]]] = {
    "eager": (None, None),
    "compile": (None, None),
    "onnxruntime": ("onnxruntime", "onnx"),
}
#: LLM prefill runtimes: name -> (modules to import, pip extra that installs them or None).
LLM_RUNTIMES: dict[str, tuple[tuple[str, ...], Optional[str]]] = {
    "transformers": ((), None),
    "llamacpp": (("llama_cpp", "gguf"), "llamacpp"),
}
#: Matrix formats of the GGUF that llama.cpp runs (see explorer.measure.llamacpp.QUANTS).
LLM_QUANTS = ("f16", "q8_0", "q4_0")
LM_HEADS = ("last", "all")
LLM_ATTENTION = ("sdpa", "eager")
PREPROCESS = ("pil", "torch", "none")
PREPROCESS_FIT = ("crop", "pad")
#: How long interleaved timings sample: each to its own stopping rule, or together (explorer.measure.interleave).
WINDOWS = ("own", "group")
_IMAGE_RE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")
#: The most threads a setting may name anywhere (this machine's own limit: :meth:`MeasureSettings.check_on_machine`).
MAX_THREADS = 4096
ONNX_CPU_ONLY = ("'cpu' with runtime='onnxruntime' (only the CPU execution provider is wired up; see "
                 "docs/measurement.md)")
LLAMACPP_CPU_ONLY = "'cpu' with llm_runtime='llamacpp' (the CPU build of llama.cpp is what the llamacpp extra installs)"


def usable_cores() -> int:
    """Logical cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str) -> torch.device:
    """The concrete torch device of a device name: ``auto`` picks cuda, then mps, then cpu.

    The one resolution of ``auto`` (measurement and training both use it).
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise OptionError("device", device, "one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
    if device == "cuda":
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return torch.device(device)


@dataclass(frozen=True)
class MeasureSettings:
    """Everything that decides how a latency is measured.

    ``device``: ``auto`` (cuda if available, else mps, else cpu), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
    ``threads``: ``None`` leaves torch's default; on CPU an integer is set while measuring and
    restored afterwards. Warm-up runs until both ``warmup_s`` and ``warmup_iters`` are reached;
    timing stops when the 95% CI of the median is within ``target_rel_ci`` of it, or at
    ``max_iters`` / ``max_time_s`` (then the timing is flagged noisy), never before ``min_iters``.

    ``runtime`` runs the encoder and projector through ``eager`` PyTorch, ``compile``
    (``torch.compile``; the same as ``compile=True``, which also compiles the prefill) or
    ``onnxruntime`` (a fixed-shape ONNX export, checked against eager before timing; needs the
    ``onnx`` extra). ``lm_head``: the LM head on the ``last`` prompt position (HF ``generate``)
    or on ``all`` of them (ml-fastvlm's app, mlx-vlm). ``llm_attention``: transformers'
    attention implementation for the prefill (``sdpa`` or ``eager``). ``preprocess``: how a
    ``source_image`` (``WIDTHxHEIGHT`` pixels) becomes the encoder's input (``pil``, ``torch`` or
    ``none`` to skip it), by resizing the shortest side and a centre ``crop`` or a ``pad`` to square.
    ``llm_runtime`` runs the prefill through ``transformers`` (PyTorch) or ``llamacpp``
    (llama.cpp through llama-cpp-python, on a GGUF written from the same random weights, its
    matrices in ``llm_quant``: ``f16``, ``q8_0`` or ``q4_0``; needs the ``llamacpp`` extra).
    ``probe``: time the reference probe beside the samples (``explorer.measure.probe``; how fast
    the machine was; not part of the environment key, it changes no measured value). ``window``
    (measurements timed in interleaved rounds): ``own`` stops each timing at its own stopping rule;
    ``group`` keeps a converged timing sampling while another of its group is still timing, so
    that all of them span the same stretch of time (``explorer.measure.interleave``; not part of
    the environment key).
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
    runtime: str = "eager"
    lm_head: str = "last"
    llm_attention: str = "sdpa"
    preprocess: str = "pil"
    source_image: str = "1920x1080"
    preprocess_fit: str = "crop"
    llm_runtime: str = "transformers"
    llm_quant: str = "f16"
    probe: bool = True
    window: str = "own"

    def __post_init__(self) -> None:
        """The value checks, so an invalid MeasureSettings cannot exist: each raises
        :class:`~explorer.checks.OptionError` naming the field, the value and what is allowed.
        What depends on this machine (cores, installed runtimes, CUDA / MPS, a C++ compiler, what
        ``auto`` resolves to) is :meth:`check_on_machine`'s, called where the measuring starts."""
        require(isinstance(self.device, str) and bool(DEVICE_PATTERN.fullmatch(self.device)), "measure.device",
                self.device, "one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
        check_choice("measure.dtype", self.dtype, DTYPES)
        check_int("measure.threads", self.threads, low=1, high=MAX_THREADS, optional=True,
                  none_means="torch's default")
        check_int("measure.batch_size", self.batch_size, low=1, high=4096)
        for name in ("channels_last", "compile", "reparameterize", "probe"):
            check_bool(f"measure.{name}", getattr(self, name))
        check_choice("measure.window", self.window, WINDOWS)
        check_number("measure.warmup_s", self.warmup_s, low=0, high=3600)
        check_int("measure.warmup_iters", self.warmup_iters, low=0, high=100_000)
        check_int("measure.min_iters", self.min_iters, low=1, high=100_000)
        check_int("measure.max_iters", self.max_iters, low=self.min_iters, high=1_000_000)
        check_number("measure.max_time_s", self.max_time_s, low=0, low_open=True, high=86_400)
        require(is_number(self.target_rel_ci) and 0 < self.target_rel_ci < 1, "measure.target_rel_ci", self.target_rel_ci,
                "a fraction in (0, 1), e.g. 0.02 for +-2%")
        for name, allowed in (("lm_head", LM_HEADS), ("llm_attention", LLM_ATTENTION),
                              ("preprocess", PREPROCESS), ("preprocess_fit", PREPROCESS_FIT)):
            check_choice(f"measure.{name}", getattr(self, name), allowed)
        require(isinstance(self.source_image, str) and bool(_IMAGE_RE.fullmatch(self.source_image)),
                "measure.source_image", self.source_image, "WIDTHxHEIGHT in pixels, e.g. '1920x1080'")
        self._check_runtime_values()
        self._check_llm_runtime_values()

    def _check_runtime_values(self) -> None:
        check_choice("measure.runtime", self.runtime, RUNTIMES)
        if self.compile and self.runtime not in ("eager", "compile"):
            raise OptionError("measure.compile", self.compile, f"False with runtime={self.runtime!r} (compile=True is "
                              "runtime='compile')")
        if self.runtime == "onnxruntime":
            if self.dtype != "float32":
                raise OptionError("measure.dtype", self.dtype, "'float32' with runtime='onnxruntime' (the export is "
                                  "checked against eager in fp32)")
            if self.channels_last:
                raise OptionError("measure.channels_last", self.channels_last, "False with runtime='onnxruntime' (a "
                                  "torch memory layout; ONNX Runtime chooses its own)")
            if self.device not in ("auto", "cpu"):
                raise OptionError("measure.device", self.device, ONNX_CPU_ONLY)

    def _check_llm_runtime_values(self) -> None:
        check_choice("measure.llm_runtime", self.llm_runtime, LLM_RUNTIMES)
        check_choice("measure.llm_quant", self.llm_quant, LLM_QUANTS)
        if self.llm_runtime == "transformers":
            if self.llm_quant != "f16":
                raise OptionError("measure.llm_quant", self.llm_quant, "'f16' (the default) unless "
                                  "measure.llm_runtime=llamacpp: transformers runs the prefill in measure.dtype")
            return
        if self.llm_attention != "sdpa":
            raise OptionError("measure.llm_attention", self.llm_attention, "'sdpa' (the default) with "
                              "llm_runtime='llamacpp': llama.cpp has its own attention kernels")
        if self.device not in ("auto", "cpu"):
            raise OptionError("measure.device", self.device, LLAMACPP_CPU_ONLY)
        if self.batch_size != 1:
            raise OptionError("measure.batch_size", self.batch_size, "1 with llm_runtime='llamacpp' (one sequence "
                              "per prefill)")

    def check_on_machine(self) -> "MeasureSettings":
        """Check what depends on this machine, where the measuring starts (the values were checked
        when the settings were made): threads at most the usable cores, the runtimes installed,
        the device present (``auto`` resolved), bfloat16 on the GPU, a C++ compiler for
        torch.compile on CPU. Raises :class:`~explorer.checks.OptionError`; returns self."""
        cores = usable_cores()
        check_int("measure.threads", self.threads, low=1, high=cores, optional=True,
                  none_means=f"torch's default; this machine has {cores} logical cores")
        module, extra = RUNTIMES[self.runtime]
        if module is not None and importlib.util.find_spec(module) is None:
            raise OptionError("measure.runtime", self.runtime, f"a runtime that is installed: {module} is not; install "
                              f"it with `pip install 'explorer[{extra}]'` (or `pip install {module} onnx`)")
        device = self.resolve_device()
        if self.runtime == "onnxruntime" and device.type != "cpu":
            raise OptionError("measure.device", self.device, ONNX_CPU_ONLY)
        if self.llm_runtime != "transformers":
            modules, extra = LLM_RUNTIMES[self.llm_runtime]
            missing = [m for m in modules if importlib.util.find_spec(m) is None]
            if missing:
                raise OptionError("measure.llm_runtime", self.llm_runtime, f"a runtime that is installed: "
                                  f"{', '.join(missing)} is not; install it with `pip install 'explorer[{extra}]'` "
                                  "(llama-cpp-python builds llama.cpp from source: a few minutes)")
            if device.type != "cpu":
                raise OptionError("measure.device", self.device, LLAMACPP_CPU_ONLY)
        self._check_device(device)
        return self

    @property
    def effective_llm_runtime(self) -> str:
        """``transformers``, or ``llamacpp/<quant>`` (what the environment records)."""
        return "transformers" if self.llm_runtime == "transformers" else f"{self.llm_runtime}/{self.llm_quant}"

    @property
    def effective_runtime(self) -> str:
        """``compile`` when ``compile=True`` (the older spelling), else ``runtime``."""
        return "compile" if self.compile else self.runtime

    @property
    def source_size(self) -> tuple[int, int]:
        """``(width, height)`` of the source image."""
        width, height = self.source_image.split("x")
        return int(width), int(height)

    def _check_device(self, device: torch.device) -> None:
        if self.effective_runtime == "compile" and device.type == "cpu" and not any(
                shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            raise OptionError("measure.runtime" if self.runtime == "compile" else "measure.compile",
                              self.runtime if self.runtime == "compile" else self.compile, "not torch.compile on this machine: torch.compile on CPU needs a C++ "
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
            if not mps_available():
                raise OptionError("measure.device", self.device, "a device this machine has: MPS is not available "
                           "(use 'cpu' or 'auto')")

    def resolve_device(self) -> torch.device:
        """The concrete torch device: ``auto`` picks cuda, then mps, then cpu (:func:`resolve_device`)."""
        return resolve_device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
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
    runtime: str = "eager"  # what ran the encoder and projector: eager | compile | onnxruntime
    runtime_version: str = ""  # e.g. onnxruntime's version; empty for the torch runtimes
    llm_runtime: str = "transformers"  # what ran the prefill: transformers | llamacpp/<quant>
    llm_runtime_version: str = ""  # e.g. llama_cpp_python's version; empty for transformers

    @property
    def key(self) -> str:
        """Stable digest of every field (same machine + torch + settings -> same key).

        ``runtime``, ``runtime_version``, ``llm_runtime`` and ``llm_runtime_version`` enter only
        when not at their defaults, so eager environments keep the keys they had before those
        fields existed.
        """
        fields = dataclasses.asdict(self)
        for name, default in (("runtime", "eager"), ("runtime_version", ""), ("llm_runtime", "transformers"),
                              ("llm_runtime_version", "")):
            if fields[name] == default:
                del fields[name]
        payload = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def settings_digest(settings: MeasureSettings) -> str:
    """Digest of the measurement-relevant settings (dtype, batch, layout, runtime, reparam, LM head,
    attention implementation, preprocessing).

    Protocol caps (warm-up, iteration and time limits, target CI) change how precisely a value
    is known, not the value, so they are left out; device and threads are Environment fields.
    """
    payload: dict[str, Any] = {name: getattr(settings, name) for name in _DIGEST_FIELDS}
    runtime = settings.effective_runtime
    payload["compile"] = runtime == "compile"  # runtime='compile' and compile=True measure the same thing
    defaults = MeasureSettings()
    for name in _DIGEST_IF_SET:
        value = runtime if name == "runtime" else getattr(settings, name)
        if name == "runtime" and value in ("eager", "compile"):
            continue  # already in "compile"
        if settings.preprocess == "none" and name in ("source_image", "preprocess_fit"):
            continue  # nothing is preprocessed: size and fit change nothing
        if value != getattr(defaults, name):
            payload[name] = value
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def current_environment(settings: MeasureSettings) -> Environment:
    """The Environment a measurement with ``settings`` runs in on this machine (checks it on the
    machine first)."""
    settings.check_on_machine()
    device = settings.resolve_device()
    threads = settings.effective_threads() if device.type == "cpu" else torch.get_num_threads()
    return Environment(
        device=device_name(device),
        device_type=device.type,
        dtype=settings.dtype,
        threads=int(threads),
        torch_version=torch.__version__,
        settings_digest=settings_digest(settings),
        runtime=settings.effective_runtime,
        runtime_version=runtime_version(settings.effective_runtime),
        llm_runtime=settings.effective_llm_runtime,
        llm_runtime_version=_module_version("llama_cpp_python") if settings.llm_runtime == "llamacpp" else "",
    )


def runtime_version(runtime: str) -> str:
    """Version of the library behind ``runtime`` (empty for eager and compile: torch_version says it)."""
    module, _ = RUNTIMES.get(runtime, (None, None))
    return "" if module is None else _module_version(module)


def _module_version(distribution: str) -> str:
    """``"<distribution> <version>"`` from the installed package's metadata (the name alone without it)."""
    try:
        from importlib.metadata import version

        return f"{distribution} {version(distribution)}"
    except Exception:  # installed without metadata
        return distribution
