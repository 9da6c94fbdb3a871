"""Cost of a vision encoder at one input resolution: params, tokens, FLOPs, latency, memory."""
from __future__ import annotations

import dataclasses

from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from ..checks import is_int, require
from .costs import EncoderCost, Timing
from .flops import count_flops, count_flops_torch
from .memory import measure_peak_memory
from .preprocess import describe as describe_preprocess
from .preprocess import preprocess_fn
from .runtimes import ExportedModel, export_checked
from .settings import MeasureSettings, thread_scope
from .timing import time_callable


def _check_resolution(resolution: Any) -> int:
    require(is_int(resolution) and resolution > 0, "resolution", resolution, "a positive integer number of pixels")
    return resolution


def prepare_exported(model: nn.Module, example: torch.Tensor, settings: MeasureSettings,
                     image_like: bool = True) -> tuple[ExportedModel, nn.Module, torch.Tensor, float]:
    """Move ``model`` and ``example`` to the settings' device/dtype/layout and export them for the
    settings' runtime, checked against eager (:func:`runtimes.export_checked`).

    Returns ``(exported, model, input, relative error)``. ``channels_last`` applies to 4-D
    (image) inputs only. ``compile`` compiles on its first call, inside the export, so the
    timer never sees compilation; ONNX Runtime gets a fixed-shape export of ``example``'s shape.
    """
    device = settings.resolve_device()
    model = model.to(device=device, dtype=settings.torch_dtype).eval()
    x = example.to(device=device, dtype=settings.torch_dtype)
    if settings.channels_last and image_like and x.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with thread_scope(settings):
        exported, err = export_checked(model, x, settings)
    return exported, model, x, err


def prepare_for_timing(model: nn.Module, example: torch.Tensor, settings: MeasureSettings,
                       image_like: bool = True) -> tuple[Callable[[], Any], nn.Module, torch.Tensor]:
    """:func:`prepare_exported` without the error: ``(fn, model, input)``."""
    exported, model, x, _ = prepare_exported(model, example, settings, image_like)
    return exported, model, x


def measure_preprocess(encoder: str, resolution: int, settings: MeasureSettings) -> tuple[Optional[Timing], str]:
    """Latency of preprocessing ``settings.batch_size`` source images for ``encoder`` at ``resolution``.

    ``(None, "none")`` when ``settings.preprocess == "none"``. The output shape is checked
    against the encoder's input before timing.
    """
    if settings.preprocess == "none":
        return None, "none"
    source = settings.source_size
    fn = preprocess_fn(settings.preprocess, encoder, resolution, source, settings.preprocess_fit,
                       images=settings.batch_size)
    shape = tuple(fn().shape)
    if shape != (settings.batch_size, 3, resolution, resolution):
        raise RuntimeError(f"preprocessing produced {shape}, not {(settings.batch_size, 3, resolution, resolution)}")
    cpu = dataclasses.replace(settings, device="cpu", runtime="eager", compile=False)  # PIL/CPU work
    return time_callable(fn, cpu), describe_preprocess(settings.preprocess, source, settings.preprocess_fit,
                                                       resolution)


def measure_encoder(name: str, knobs: Optional[Mapping[str, Any]], resolution: int,
                    settings: MeasureSettings, time: bool = True, counter: str = "fvcore") -> EncoderCost:
    """Build ``name`` with ``knobs`` (reparameterized if ``settings.reparameterize``) and measure it.

    FLOPs are for ONE image at ``resolution`` (2 x MACs, fp32 on CPU: FLOPs do not depend on
    device or dtype); latency and peak memory are of one forward at ``settings.batch_size``
    with the settings' dtype, layout and runtime (exported per resolution and checked against
    eager before timing). With ``settings.preprocess`` other than ``none``, preprocessing
    ``batch_size`` source images is timed too (``preprocess_latency``). ``counter``: ``fvcore`` (default) or
    ``torch`` (FlopCounterMode on a meta copy: no forward pass, much faster for big inputs).
    Bad settings, resolution or knobs raise ValueError before any model is built or run.
    """
    settings.check_on_machine()
    _check_resolution(resolution)
    if counter not in ("fvcore", "torch"):
        raise ValueError(f"invalid counter={counter!r}: 'fvcore' or 'torch'")
    knobs = dict(knobs or {})
    from ..models import build_encoder

    model = build_encoder(name, **knobs)
    if settings.reparameterize:
        model.reparameterize()
    model.eval()
    visual_tokens = model.num_tokens(resolution)
    image = torch.randn(1, 3, resolution, resolution)
    if counter == "fvcore":
        flops = count_flops(model, image)
    else:
        meta_model = _meta_copy(model)
        flops = count_flops_torch(meta_model, image.to("meta"))
    params_m = model.num_params() / 1e6

    latency = None
    peak_mb: Optional[float] = None
    peak_method = "not-measured"
    pre_latency: Optional[Timing] = None
    pre_desc = "none"
    runtime_error = 0.0
    if time:
        pre_latency, pre_desc = measure_preprocess(name, resolution, settings)
        batch = torch.randn(settings.batch_size, 3, resolution, resolution)
        fn, model, x, runtime_error = prepare_exported(model, batch, settings)
        warm = settings
        if fn.module is not None:
            # The memory pass is a full forward: it doubles as the first warm-up call.
            peak = measure_peak_memory(fn, settings, resident=(model, x))
            peak_mb, peak_method = peak.peak_mb, peak.method
            warm = dataclasses.replace(settings, warmup_iters=max(0, settings.warmup_iters - 1))
        else:  # the runtime allocates outside torch, where the profiler cannot see
            peak_method = f"unavailable({fn.runtime} allocates outside torch)"
        latency = time_callable(fn, warm, module=model)
    return EncoderCost(
        encoder=name,
        knobs=knobs,
        resolution=resolution,
        visual_tokens=visual_tokens,
        out_channels=int(model.out_channels),
        params_m=params_m,
        gflops=flops.gflops,
        latency=latency,
        peak_mem_mb=peak_mb,
        peak_mem_method=peak_method,
        skipped_ops=dict(flops.skipped_ops),
        preprocess_latency=pre_latency,
        preprocess=pre_desc,
        runtime=settings.effective_runtime,
        runtime_error=runtime_error,
    )


def _meta_copy(model: nn.Module) -> nn.Module:
    """A weightless copy of ``model`` on the meta device (for counting without allocation)."""
    import copy

    clone = copy.deepcopy(model)
    return clone.to("meta")
