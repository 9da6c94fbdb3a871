"""Runtimes that execute an encoder or projector: eager PyTorch, ``torch.compile``, ONNX Runtime.

Every runtime turns a module and ONE fixed example input into an :class:`ExportedModel`: a
zero-argument callable that runs the model on that input (what the timer calls) plus the
output as a torch tensor (what the check against eager compares). Shapes are fixed at export,
as ml-fastvlm's CoreML export does per resolution. A new runtime (TensorRT, CoreML) joins by
writing one ``export_<name>(module, example, settings) -> ExportedModel`` function and adding it
to :data:`EXPORTERS` (and its import/extra to ``settings.RUNTIMES``); see docs/measurement.md.

:func:`export_checked` is the entry point measurement uses: export, run once, compare with the
eager output (relative max-abs error ``max|y - y_eager| / max|y_eager|`` at most
:data:`TOLERANCE` in fp32) and raise :class:`RuntimeMismatch` before any timing if it is larger.
"""
from __future__ import annotations

import contextlib
import io
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from .settings import MeasureSettings

__all__ = ["ExportedModel", "ExportError", "RuntimeMismatch", "TOLERANCE", "EXPORTERS", "export_model",
           "export_checked", "relative_error"]

#: Largest relative max-abs error accepted against eager (fp32).
TOLERANCE = 1e-4
#: Above this many bytes of weights, the ONNX file is written to a temporary folder with its
#: weights as external data (protobuf caps one message at 2 GiB); below, it stays in memory.
_IN_MEMORY_LIMIT = 1_800_000_000


class ExportError(RuntimeError):
    """A model could not be exported to a runtime; the message names the operator when known."""


class RuntimeMismatch(RuntimeError):
    """A runtime's output differs from eager by more than the tolerance."""


@dataclass(frozen=True)
class ExportedModel:
    """A model bound to one input shape in one runtime.

    ``run()`` executes one forward pass on the bound input (the timed call; its return value
    is the runtime's native output); ``output()`` runs once and returns the output as a CPU
    float tensor for checking. ``module`` is the torch module behind it (eval flags, memory),
    None where the runtime holds its own copy of the weights.
    """

    runtime: str
    input_shape: tuple[int, ...]
    run: Callable[[], Any]
    output: Callable[[], torch.Tensor]
    module: Optional[nn.Module] = None

    def __call__(self) -> Any:
        return self.run()


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """``max|value - reference| / max|reference|`` (absolute error when the reference is all zeros)."""
    if tuple(value.shape) != tuple(reference.shape):
        raise RuntimeMismatch(f"output shape {tuple(value.shape)} differs from eager's {tuple(reference.shape)}")
    value, reference = value.detach().float().cpu(), reference.detach().float().cpu()
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    err = float((value - reference).abs().max()) if reference.numel() else 0.0
    return err / scale if scale > 0 else err


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model returned {type(out).__name__}, not a tensor")


# --------------------------------------------------------------------------------------------
# eager and torch.compile


def export_eager(module: nn.Module, example: torch.Tensor, settings: MeasureSettings) -> ExportedModel:
    def run() -> Any:
        return module(example)

    def output() -> torch.Tensor:
        with torch.inference_mode():
            return _first_tensor(module(example)).float().cpu()

    return ExportedModel("eager", tuple(example.shape), run, output, module)


def export_compile(module: nn.Module, example: torch.Tensor, settings: MeasureSettings) -> ExportedModel:
    """``torch.compile`` (inductor, default mode); compiled here, on the first call, not in the timer."""
    compiled = torch.compile(module)
    try:
        with torch.inference_mode():
            compiled(example)
    except Exception as err:  # inductor errors carry the failing node in their text
        raise ExportError(f"torch.compile of {type(module).__name__} failed{_op_hint(err)}: "
                          f"{_first_line(err)}") from err

    def run() -> Any:
        return compiled(example)

    def output() -> torch.Tensor:
        with torch.inference_mode():
            return _first_tensor(compiled(example)).float().cpu()

    return ExportedModel("compile", tuple(example.shape), run, output, module)


# --------------------------------------------------------------------------------------------
# ONNX Runtime

_OP_PATTERNS = (
    re.compile(r"operator '?((?:aten|prim|onnx)::[A-Za-z0-9_.]+)'?"),
    re.compile(r"((?:aten|prim)::[A-Za-z0-9_.]+)"),
    re.compile(r"(aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)"),
    re.compile(r"op_type:?\s*'?([A-Za-z0-9_]+)'?"),
)


def _op_hint(err: BaseException) -> str:
    """`` at op aten::foo`` when the error text names an operator, else empty."""
    text = f"{err}\n{err.__cause__ or ''}"
    for pattern in _OP_PATTERNS:
        m = pattern.search(text)
        if m:
            return f" at op {m.group(1)}"
    return ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporter's deprecation and tracer warnings (they are about the tool, not the model)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def onnx_bytes_or_path(module: nn.Module, example: torch.Tensor, folder: Optional[Path]) -> Any:
    """Export ``module`` at ``example``'s fixed shape (opset 17, TorchScript exporter).

    Returns the model as bytes, or the path of the ``.onnx`` file inside ``folder`` when one is
    given (for models above protobuf's 2 GiB, whose weights go to external data beside it).
    The TorchScript exporter is used because it exports these encoders in about a second where
    the dynamo exporter takes five or more on two cores; both give the same graph here.
    """
    target: Any = io.BytesIO() if folder is None else str(folder / "model.onnx")
    try:
        with _quiet_export(), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(module, (example,), target, dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"], do_constant_folding=True)
    except Exception as err:
        raise ExportError(f"ONNX export of {type(module).__name__} failed{_op_hint(err)}: {_first_line(err)}") from err
    return target.getvalue() if folder is None else target


def export_onnxruntime(module: nn.Module, example: torch.Tensor, settings: MeasureSettings) -> ExportedModel:
    """A fixed-shape ONNX export run by ONNX Runtime's CPU execution provider.

    Threads: ``intra_op_num_threads`` = the measurement's threads (torch's setting or default),
    one inter-op thread, sequential execution, all graph optimisations: the same parallelism
    torch gets.
    """
    try:
        import onnxruntime as ort
    except ImportError as err:  # MeasureSettings.check_on_machine() normally catches this first
        raise ExportError("runtime='onnxruntime' needs onnxruntime: pip install 'explorer[onnx]'") from err
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(settings.effective_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    example_cpu = example.detach().to("cpu", torch.float32).contiguous()
    module_cpu = module.to("cpu")
    if weight_bytes > _IN_MEMORY_LIMIT:
        # ORT reads external weights while building the session; the folder goes right after.
        with tempfile.TemporaryDirectory(prefix="explorer-onnx-") as tmp:
            model = onnx_bytes_or_path(module_cpu, example_cpu, Path(tmp))
            session = _session(ort, model, opts)
    else:
        session = _session(ort, onnx_bytes_or_path(module_cpu, example_cpu, None), opts)
    name = session.get_inputs()[0].name
    feed = {name: example_cpu.numpy()}

    def run() -> Any:
        return session.run(None, feed)

    def output() -> torch.Tensor:
        return torch.from_numpy(session.run(None, feed)[0]).float()

    return ExportedModel("onnxruntime", tuple(example.shape), run, output, None)


def _session(ort: Any, model: Any, opts: Any) -> Any:
    try:
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # an exported graph ORT cannot load names its node/op
        raise ExportError(f"ONNX Runtime could not load the export{_op_hint(err)}: {_first_line(err)}") from err


#: runtime name -> exporter. Keep in step with ``settings.RUNTIMES``.
EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, MeasureSettings], ExportedModel]] = {
    "eager": export_eager,
    "compile": export_compile,
    "onnxruntime": export_onnxruntime,
}


def export_model(module: nn.Module, example: torch.Tensor, settings: MeasureSettings) -> ExportedModel:
    """Export ``module`` (already on the settings' device/dtype, eval mode) for ``settings.effective_runtime``."""
    runtime = settings.effective_runtime
    if runtime not in EXPORTERS:
        raise ValueError(f"invalid runtime={runtime!r}: one of {', '.join(map(repr, EXPORTERS))}")
    return EXPORTERS[runtime](module, example, settings)


def export_checked(module: nn.Module, example: torch.Tensor, settings: MeasureSettings,
                   tolerance: float = TOLERANCE) -> tuple[ExportedModel, float]:
    """Export for the settings' runtime and check it against eager before anything is timed.

    Returns ``(exported, relative error)`` (0.0 for eager). The check compares in the settings'
    dtype; the tolerance is meant for fp32 (half precision is compared at 1e-2).
    """
    exported = export_model(module, example, settings)
    if exported.runtime == "eager":
        return exported, 0.0
    with torch.inference_mode():
        reference = _first_tensor(module(example)).float().cpu()
    err = relative_error(exported.output(), reference)
    limit = tolerance if settings.dtype == "float32" else max(tolerance, 1e-2)
    if not err <= limit:  # also catches NaN
        raise RuntimeMismatch(f"{exported.runtime} output of {type(module).__name__} at input "
                              f"{list(example.shape)} differs from eager: relative max-abs error {err:.3g} > "
                              f"{limit:g}; not timed")
    return exported, err
