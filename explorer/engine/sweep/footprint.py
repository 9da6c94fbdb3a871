"""Whether a planned measurement can fit at all: prompt lengths against the LLM's positions, and
the largest tensor of an encoder's forward pass against the memory the device has.

Both are refusals before any work, so they must never refuse what could run: the encoder check
uses a lower bound of the peak (the single largest module output, found by a meta-device forward
pass: no memory allocated), so a design point is refused only when even that one tensor cannot fit.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

__all__ = ["LARGE_RESOLUTION", "DTYPE_BYTES", "largest_tensor_bytes", "available_memory_bytes"]

#: Encoders are checked for memory from this input resolution up (below it nothing comes close).
LARGE_RESOLUTION: int = 2048

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def largest_tensor_bytes(family: str, knobs: Mapping[str, Any], resolution: int, batch: int, dtype: str) -> float:
    """Bytes of the largest output of any module in the encoder's forward pass (meta device).

    Module outputs are materialised by every implementation; the intermediates inside a fused op
    (an attention matrix under flash attention) are not, so they are left out: a lower bound.
    """
    import torch

    from explorer.models import build_encoder

    largest = [batch * 3 * resolution * resolution]

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel())

    with torch.device("meta"):
        enc = build_encoder(family, **dict(knobs)).eval()
    handles = [m.register_forward_hook(hook) for m in enc.modules()]
    try:
        with torch.no_grad():
            enc(torch.empty(batch, 3, resolution, resolution, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return float(largest[0]) * DTYPE_BYTES.get(dtype, 4)


def available_memory_bytes(settings: Any) -> Optional[float]:
    """Memory a measurement may use: free GPU memory on CUDA, available RAM on CPU (None if unknown)."""
    try:
        device = settings.resolve_device()
        if device.type == "cuda":
            import torch

            free, _total = torch.cuda.mem_get_info(device)
            return float(free)
        import psutil

        return float(psutil.virtual_memory().available)
    except Exception:  # an exotic platform: no memory check rather than a wrong one
        return None
