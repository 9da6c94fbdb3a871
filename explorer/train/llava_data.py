"""LLaVA-format instruction data: a JSON/JSONL list of conversations about images in a folder.

Format (as LLaVA and FastVLM publish their training mixtures)::

    [{"id": "000123",
      "image": "coco/train2017/000000123.jpg",           # relative to the image folder
      "conversations": [
          {"from": "human", "value": "<image>\\nWhat is on the table?"},
          {"from": "gpt", "value": "A red cup."},
          {"from": "human", "value": "What colour is the wall?"},   # more turns are allowed
          {"from": "gpt", "value": "White."}]}]

Why checked up front: a malformed entry or a missing image found three hours into a run wastes
the run, so :class:`LlavaDataset` validates every entry (and, by default, that every image file
exists) when it is built and names the offending entry in the ``ValueError``.

Preprocessing follows the FastVLM reference: ``crop`` resizes the shortest edge to R and centre
crops R x R; ``pad`` pads the image to a square (black, FastVLM's mean is 0) and resizes to R;
both scale pixels to [0, 1] (mean 0, std 1). The ``<image>`` placeholder is removed from the
text: the model always places the visual tokens before the first turn.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from explorer.checks import is_int, require

IMAGE_TOKEN = "<image>"
IMAGE_MODES = ("crop", "pad")
HUMAN, GPT = "human", "gpt"



@dataclass(frozen=True)
class LlavaEntry:
    """One validated record: its image path and its (question, answer) turns."""

    id: str
    image: Path
    turns: tuple[tuple[str, str], ...]
    answers: tuple[str, ...] = ()  # every reference answer of the last turn (e.g. VQA's 10 human answers)


@dataclass
class LlavaSample:
    id: str
    image: torch.Tensor  # [3, R, R] in [0, 1]
    turns: list[tuple[str, str]]  # (human, gpt) pairs; loss goes on the gpt side only
    answers: tuple[str, ...] = ()  # reference answers scored against the prediction of the last turn


def load_records(path: Union[str, Path]) -> list[dict[str, Any]]:
    """Read a JSON list or a JSONL file (one object per line)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"invalid data file {str(path)!r}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {n} is not valid JSON ({err.msg})") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    return data


def parse_entry(record: Any, position: int, image_folder: Path) -> LlavaEntry:
    """Validate one record; every error names the entry (its id, or its position)."""
    where = f"entry {position}"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object with 'id', 'image', 'conversations', got {type(record).__name__}")
    if "conversations" not in record and "question" in record:
        record = _from_eval_record(record, where)
    if "id" in record:
        where = f"entry {position} (id {record['id']!r})"
    else:
        raise ValueError(f"{where}: missing 'id'")
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError(f"{where}: 'image' must be a relative path string, got {image!r} "
                         "(text-only entries are not supported by this trainer)")
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise ValueError(f"{where}: 'conversations' must be a non-empty list of turns")
    if len(conv) % 2:
        raise ValueError(f"{where}: 'conversations' has {len(conv)} turns; expected human/gpt pairs")
    turns: list[tuple[str, str]] = []
    for k in range(0, len(conv), 2):
        pair = []
        for j, expected in ((k, HUMAN), (k + 1, GPT)):
            turn = conv[j]
            if not isinstance(turn, dict) or turn.get("from") != expected or not isinstance(turn.get("value"), str):
                got = turn.get("from") if isinstance(turn, dict) else turn
                raise ValueError(f"{where}: turn {j} must be {{'from': '{expected}', 'value': <string>}}, "
                                 f"got from={got!r}")
            pair.append(turn["value"])
        human, gpt = pair
        if IMAGE_TOKEN in gpt:
            raise ValueError(f"{where}: turn {k + 1} (gpt) contains {IMAGE_TOKEN}")
        if k > 0 and IMAGE_TOKEN in human:
            raise ValueError(f"{where}: {IMAGE_TOKEN} may appear only in the first human turn (turn {k})")
        if k == 0:
            if human.count(IMAGE_TOKEN) > 1:
                raise ValueError(f"{where}: the first human turn holds {human.count(IMAGE_TOKEN)} {IMAGE_TOKEN} "
                                 "placeholders; one image per entry is supported")
            human = human.replace(IMAGE_TOKEN, "").strip()
        if not gpt.strip():
            raise ValueError(f"{where}: turn {k + 1} (gpt) is empty")
        turns.append((human, gpt))
    answers = record.get("answers")
    if answers is None:
        answers = [turns[-1][1]]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError(f"{where}: 'answers' must be a non-empty list of non-empty strings")
    return LlavaEntry(id=str(record["id"]), image=image_folder / image, turns=tuple(turns), answers=tuple(answers))


def _from_eval_record(record: dict[str, Any], where: str) -> dict[str, Any]:
    """An lmms-eval-like record (question_id, image, question, answers / answer) as a conversation."""
    answers = record.get("answers")
    if answers is None and isinstance(record.get("answer"), str):
        answers = [record["answer"]]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError(f"{where}: 'answers' must be a non-empty list of non-empty strings "
                         "(or give 'answer')")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: 'question' must be a non-empty string")
    rid = record.get("question_id", record.get("id"))
    if rid is None:
        raise ValueError(f"{where}: missing 'question_id'")
    # train on the most common answer; score against all of them
    common = max(answers, key=lambda a: (answers.count(a), -answers.index(a)))
    return {"id": rid, "image": record.get("image"), "answers": list(answers),
            "conversations": [{"from": HUMAN, "value": question}, {"from": GPT, "value": common}]}


def preprocess(image: Image.Image, resolution: int, mode: str = "crop",
               pad_color: tuple[int, int, int] = (0, 0, 0)) -> torch.Tensor:
    """FastVLM preprocessing of one PIL image to a ``[3, R, R]`` float tensor in [0, 1]."""
    require(mode in IMAGE_MODES, "image_mode", mode, f"one of {list(IMAGE_MODES)}")
    image = image.convert("RGB")
    w, h = image.size
    if mode == "pad":
        side = max(w, h)
        square = Image.new("RGB", (side, side), pad_color)
        square.paste(image, ((side - w) // 2, (side - h) // 2))
        image = square.resize((resolution, resolution), Image.Resampling.BICUBIC)
    else:
        scale = resolution / min(w, h)
        nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) * np.float32(1 / 255))


class LlavaDataset(Dataset):
    """LLaVA-format conversations with their images, preprocessed to ``resolution``."""

    def __init__(self, data_path: Union[str, Path], image_folder: Union[str, Path], resolution: int,
                 image_mode: str = "crop", check_images: bool = True, limit: Optional[int] = None) -> None:
        require(is_int(resolution) and resolution > 0, "resolution", resolution, "a positive integer")
        require(image_mode in IMAGE_MODES, "image_mode", image_mode, f"one of {list(IMAGE_MODES)}")
        folder = Path(image_folder)
        if not folder.is_dir():
            raise ValueError(f"invalid image_folder={str(folder)!r}: no such directory")
        records = load_records(data_path)
        if limit is not None:
            records = records[:limit]
        if not records:
            raise ValueError(f"{data_path}: no entries")
        self.entries = [parse_entry(r, i, folder) for i, r in enumerate(records)]
        seen: set[str] = set()
        for i, e in enumerate(self.entries):
            if e.id in seen:
                raise ValueError(f"entry {i} (id {e.id!r}): duplicate id")
            seen.add(e.id)
        if check_images:
            for i, e in enumerate(self.entries):
                if not e.image.is_file():
                    raise ValueError(f"entry {i} (id {e.id!r}): image file {str(e.image)!r} not found")
        self.resolution = resolution
        self.image_mode = image_mode

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> LlavaSample:
        entry = self.entries[index]
        try:
            with Image.open(entry.image) as img:
                tensor = preprocess(img, self.resolution, self.image_mode)
        except (OSError, ValueError) as err:
            raise ValueError(f"entry {index} (id {entry.id!r}): cannot read image {str(entry.image)!r}: {err}") from err
        return LlavaSample(id=entry.id, image=tensor, turns=list(entry.turns), answers=entry.answers)
