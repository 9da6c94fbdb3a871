"""Evaluation: greedy answers scored against references, and BatchNorm statistics re-estimated first.

:func:`evaluate` scores a model on a dataset (exact match per proxy task, and every standard
metric of :mod:`explorer.train.metrics`); :func:`final_evaluation` is what a finished run reports
(whole val and test splits, predictions written to ``predictions_{val,test}.jsonl``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from .loading import loader
from .state import TrainState
from .vlm import VLM, normalize_answer


def like_encoder(images: torch.Tensor, encoder: nn.Module, device: torch.device) -> torch.Tensor:
    """Images on ``device`` in the memory format of the encoder's first conv weight."""
    weight = next((p for p in encoder.parameters() if p.dim() == 4), None)
    channels_last = weight is not None and weight.is_contiguous(memory_format=torch.channels_last) \
        and not weight.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, memory_format=fmt)


@torch.no_grad()
def recalibrate_batchnorm(encoder: nn.Module, dataset: Dataset, batches: int, batch_size: int, seed: int,
                         device: torch.device, amp_dtype: Optional[torch.dtype]) -> None:
    """Re-estimate BatchNorm running statistics from fixed training batches ("precise BN").

    Why: a from-scratch encoder trained for minutes with a high learning rate changes faster
    than BatchNorm's running averages (momentum 0.1) follow, so eval-mode accuracy swings from
    one evaluation to the next. Cumulative statistics over the current weights fix that. The
    batches are the same every time (a permutation seeded apart from the training order).
    """
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches == 0:
        return
    size = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + 7919))
    indices = [int(order[i % size]) for i in range(batches * batch_size)]
    momenta = [m.momentum for m in norms]
    was_training = encoder.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the recalibration batches
    encoder.train()
    chunks = [indices[i: i + batch_size] for i in range(0, len(indices), batch_size)]
    for images, _ in loader(dataset, chunks, 0):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            encoder(like_encoder(images, encoder, device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    encoder.train(was_training)


@torch.no_grad()
def evaluate(model: VLM, dataset: Dataset, limit: Optional[int], batch_size: int, max_new_tokens: int,
             device: torch.device, amp_dtype: Optional[torch.dtype],
             predictions_path: Optional[Path] = None,
             metrics: Optional[dict[str, float]] = None) -> tuple[float, dict[str, float]]:
    """Exact-match accuracy of greedy answers to the last turn; also per proxy task.

    ``metrics``, when given, receives the mean of every standard metric (exact match, VQA soft
    accuracy, ANLS; :mod:`explorer.train.metrics`) against each sample's reference answers (all
    of them where the evaluation set lists several, else the last turn's answer).
    """
    from .metrics import mean_by, score_one

    was_training = [m.training for m in (model.encoder, model.projector, model.lm)]
    model.eval()
    n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    correct, total = 0, 0
    by_task: dict[str, list[int]] = {}
    records = []
    per_sample: list[dict[str, float]] = []
    for images, samples in loader(dataset, batches, 0):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            preds = model.generate(like_encoder(images, model.encoder, device), [s.turns for s in samples],
                                   max_new_tokens)
        for sample, pred in zip(samples, preds):
            answer = sample.turns[-1][1]
            ok = normalize_answer(pred) == normalize_answer(answer)
            references = tuple(getattr(sample, "answers", ()) or (answer,))
            per_sample.append(score_one(pred, references))
            correct += ok
            total += 1
            task = getattr(getattr(sample, "params", None), "task", None)
            if task is not None:
                by_task.setdefault(task, [0, 0])
                by_task[task][0] += ok
                by_task[task][1] += 1
            if predictions_path is not None:
                records.append({"id": getattr(sample, "id", getattr(getattr(sample, "params", None), "index", None)),
                                "task": task, "question": sample.turns[-1][0], "answer": answer,
                                "prediction": pred, "correct": bool(ok), **per_sample[-1]})
    for module, flag in zip((model.encoder, model.projector, model.lm), was_training):
        module.train(flag)
    if predictions_path is not None:
        predictions_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    if metrics is not None:
        metrics.update(mean_by(per_sample))
    return correct / max(1, total), {k: c / t for k, (c, t) in sorted(by_task.items())}


def recalibrate(state: TrainState) -> None:
    """Precise BN on the run's training data before an evaluation; a frozen encoder keeps its statistics."""
    if state.flags[0]:
        c = state.config
        recalibrate_batchnorm(state.model.encoder, state.train_data, c.bn_recalibration_batches, c.batch_size,
                              c.seed, state.device, state.amp_dtype)


def evaluate_on_main(state: TrainState, dataset: Dataset, limit: Optional[int], path: Optional[Path] = None,
                     metrics: Optional[dict[str, float]] = None) -> tuple[Optional[float], dict[str, float]]:
    """:func:`evaluate` on the main process while the others wait; (None, {}) on the others."""
    result: tuple[Optional[float], dict[str, float]] = (None, {})
    if state.world.main:
        c = state.config
        result = evaluate(state.model, dataset, limit, c.eval_batch_size, c.max_new_tokens, state.device,
                          state.amp_dtype, path, metrics=metrics)
    state.world.barrier()
    return result


def evaluate_during_training(state: TrainState) -> None:
    """The periodic check on ``eval_samples`` val samples (``eval_every``), logged as an eval record."""
    if state.val_data is None:
        return
    recalibrate(state)
    accuracy, by_task = evaluate_on_main(state, state.val_data, state.config.eval_samples)
    state.log.write({"step": state.step, "kind": "eval", "split": "val", "accuracy": accuracy, "by_task": by_task,
                     "samples": state.config.eval_samples})


@dataclass
class FinalEvaluation:
    """A finished run's scores on the whole val and test splits (None / empty where a split is absent)."""

    val_accuracy: Optional[float] = None
    test_accuracy: Optional[float] = None
    val_by_task: dict[str, float] = field(default_factory=dict)
    test_by_task: dict[str, float] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)


def final_evaluation(state: TrainState) -> FinalEvaluation:
    """Evaluate the finished run on val and test, write the predictions and log a final record."""
    scores = FinalEvaluation()
    if state.val_data is not None or state.test_data is not None:
        recalibrate(state)
    out = state.output_dir
    if state.val_data is not None:
        scores.val_accuracy, scores.val_by_task = evaluate_on_main(
            state, state.val_data, None, out / "predictions_val.jsonl", scores.val_metrics)
    if state.test_data is not None:
        scores.test_accuracy, scores.test_by_task = evaluate_on_main(
            state, state.test_data, None, out / "predictions_test.jsonl", scores.test_metrics)
    state.log.write({"step": state.step, "kind": "final", **dataclasses.asdict(scores)})
    return scores
