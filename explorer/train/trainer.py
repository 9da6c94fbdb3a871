"""Train a VLM (registry encoder + MLP2xGelu + LM) on the proxy task or LLaVA-format data.

Public API: :func:`train` (a :class:`~explorer.train.config.TrainConfig` in) -> :class:`TrainResult`.
The parts live in their own modules: the config (``config.py``), the distributed world
(``world.py``), data order (``loading.py``), model / optimiser / schedule (``build.py``), the
training state (``state.py``) and its start (``setup.py``), checkpoints (``checkpoints.py``), the
step loop (``loop.py``) and evaluation (``evaluation.py``).

Recipe (LLaVA / FastVLM): ``stage="projector"`` trains the projector only (LLaVA stage 1);
``stage="full"`` trains everything except what ``freeze_encoder`` / ``freeze_lm`` hold fixed
(stage 2; FastVLM's stages 1.5 and 2 are ``full`` runs on other data or resolutions). Chain stages
with ``init_from`` (a checkpoint file or a run directory).

Files in ``output_dir``: ``config.json``, ``metrics.jsonl`` (one JSON record per log/eval event),
``checkpoints/step_XXXXXXX.pt``, ``predictions_{val,test}.jsonl`` and ``result.json``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch

from .build import precision_name
from .config import TrainConfig
from .evaluation import FinalEvaluation, final_evaluation
from .loop import LoopOutcome, StopHook, run_steps
from .setup import prepare_state
from .state import TrainState
from .world import joined_world


@dataclass
class TrainResult:
    """What a run reports back (also written to ``output_dir/result.json``)."""

    steps: int
    samples_seen: int
    stopped_early: bool  # True when a stop hook ended the run before max_steps
    train_loss: Optional[float]  # mean loss of the last logged window
    val_accuracy: Optional[float]  # exact match, greedy decoding, whole val split
    test_accuracy: Optional[float]
    val_by_task: dict[str, float]
    test_by_task: dict[str, float]
    wall_time_s: float  # this call
    train_time_s: float  # optimisation time summed over all resumptions
    steps_per_minute: Optional[float]  # this call's optimisation steps per minute of train time
    resumed_from_step: Optional[int]
    checkpoint_path: Optional[str]
    log_path: str
    output_dir: str
    visual_tokens: int
    params: dict[str, int]
    device: str
    precision: str
    val_metrics: dict[str, float] = field(default_factory=dict)  # exact_match, vqa_accuracy, anls; whole val split
    test_metrics: dict[str, float] = field(default_factory=dict)
    world_size: int = 1  # processes that trained (torch.distributed)
    hf_export: Optional[str] = None  # the Hugging Face FastVLM directory (export_hf=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train(config: TrainConfig, stop: Optional[StopHook] = None) -> TrainResult:
    """Run (or resume) one training stage, then evaluate on val and test.

    ``stop(step, record)`` is called after every optimisation step with the step's record
    (loss, lr, ...); returning True saves a checkpoint and ends the run early, like
    ``stop_after_steps`` (the way tests simulate a kill).

    Launched by ``torchrun --nproc-per-node N`` (or inside an initialised process group), the
    run is data-parallel (DistributedDataParallel, NCCL on GPUs, gloo on CPU): each process
    takes its micro-batches of every global batch, gradients are averaged, and the loss is the
    token-weighted mean over the global batch, as in one process. Rank 0 writes logs and
    checkpoints and evaluates; every rank re-estimates BatchNorm statistics on the same batches.
    """
    config.check_runnable()
    wall_start = time.perf_counter()
    with torch_threads(config.threads), joined_world(config) as world:
        state = prepare_state(config, world)
        outcome = run_steps(state, stop)
        scores = FinalEvaluation() if outcome.stopped else final_evaluation(state)
        hf_export = export_hf(state) if config.export_hf and not outcome.stopped and world.main else None
        result = make_result(state, outcome, scores, time.perf_counter() - wall_start, hf_export)
        if world.main:
            (state.output_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


@contextlib.contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """Torch's intra-op threads set to ``threads`` (None: left alone), restored afterwards."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)  # a notebook or a later call keeps its own setting


def export_hf(state: TrainState) -> str:
    """The trained model as transformers' FastVLM in ``output_dir/hf_fastvlm``; returns the folder."""
    from .hf_fastvlm import save_fastvlm

    return save_fastvlm(state.model, state.output_dir / "hf_fastvlm", state.config.resolution,
                        state.config.image_mode).path


def make_result(state: TrainState, outcome: LoopOutcome, scores: FinalEvaluation, wall_time_s: float,
                hf_export: Optional[str]) -> TrainResult:
    """The run's :class:`TrainResult` from its final state, this call's loop and the final scores."""
    return TrainResult(
        steps=state.step, samples_seen=state.position, stopped_early=outcome.stopped, train_loss=outcome.last_loss,
        val_accuracy=scores.val_accuracy, test_accuracy=scores.test_accuracy, val_by_task=scores.val_by_task,
        test_by_task=scores.test_by_task, val_metrics=scores.val_metrics, test_metrics=scores.test_metrics,
        wall_time_s=wall_time_s, train_time_s=state.train_time_s, steps_per_minute=outcome.steps_per_minute,
        resumed_from_step=state.resumed_from,
        checkpoint_path=str(state.checkpoint_path) if state.checkpoint_path else None,
        log_path=str(state.log.path), output_dir=str(state.output_dir),
        visual_tokens=state.model.encoder.num_tokens(state.config.resolution), params=state.params(),
        device=str(state.device), precision=precision_name(state.amp_dtype), world_size=state.world.size,
        hf_export=hf_export)
