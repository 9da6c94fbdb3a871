"""Measurement: FLOPs, latency and memory of encoders, projector and LLM prefill. Never writes files."""
from .costs import EncoderCost, PrefillCost, ProjectorCost, Timing
from .e2e import E2ECheck, assemble_vlm, validate_point
from .encoder import measure_encoder, measure_preprocess
from .flops import FlopCount, count_flops, count_flops_torch
from .memory import MemoryPeak, measure_peak_memory
from .prefill import count_prefill_flops, measure_prefill, prefill_flops, prefill_macs
from .projector import measure_projector, projector_flops
from .runtimes import ExportError, ExportedModel, RuntimeMismatch, export_checked
from .settings import Environment, MeasureSettings, current_environment
from .timing import median_ci, time_callable
from .ttft import TTFTBreakdown, measure_point

__all__ = [
    "EncoderCost", "PrefillCost", "ProjectorCost", "Timing",
    "Environment", "MeasureSettings", "current_environment",
    "FlopCount", "count_flops", "count_flops_torch",
    "MemoryPeak", "measure_peak_memory",
    "time_callable", "median_ci",
    "measure_encoder", "measure_projector", "projector_flops",
    "measure_prefill", "prefill_flops", "prefill_macs", "count_prefill_flops",
    "TTFTBreakdown", "measure_point",
    "measure_preprocess", "ExportedModel", "ExportError", "RuntimeMismatch", "export_checked",
    "E2ECheck", "assemble_vlm", "validate_point",
]
