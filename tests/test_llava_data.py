"""LLaVA-format loader: reads what a test writes, preprocesses like FastVLM, names bad entries."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from explorer.train.llava_data import LlavaDataset, load_records, preprocess


def _two_colour(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    img = Image.new("RGB", (width, height), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, width // 2, height))
    return img


def _write(tmp_path: Path, entries: list, jsonl: bool = False) -> Path:
    path = tmp_path / ("data.jsonl" if jsonl else "data.json")
    if jsonl:
        path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    else:
        path.write_text(json.dumps(entries))
    return path


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images" / "sub"
    images.mkdir(parents=True)
    _two_colour(200, 100).save(images / "wide.png")
    Image.new("RGB", (60, 90), (0, 255, 0)).save(images / "tall.jpg")
    return tmp_path / "images"


ENTRIES = [
    {"id": "a1", "image": "sub/wide.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is on the left?"},
        {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "And on the right?"},
        {"from": "gpt", "value": "Blue."}]},
    {"id": "b2", "image": "sub/tall.jpg", "conversations": [
        {"from": "human", "value": "Describe the image.\n<image>"},
        {"from": "gpt", "value": "A green rectangle."}]},
]


@pytest.mark.parametrize("jsonl", [False, True])
def test_reads_json_and_jsonl(tmp_path: Path, folder: Path, jsonl: bool) -> None:
    ds = LlavaDataset(_write(tmp_path, ENTRIES, jsonl), folder, resolution=32)
    assert len(ds) == 2
    first = ds[0]
    assert first.id == "a1"
    assert first.image.shape == (3, 32, 32) and first.image.dtype == torch.float32
    assert 0.0 <= float(first.image.min()) and float(first.image.max()) <= 1.0
    assert first.turns == [("What colour is on the left?", "Red."), ("And on the right?", "Blue.")]
    assert ds[1].turns == [("Describe the image.", "A green rectangle.")]
    assert torch.allclose(ds[1].image, torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 32, 32), atol=0.02)


def test_crop_and_pad_modes() -> None:
    wide = _two_colour(200, 100)
    crop = preprocess(wide, 50, "crop")  # 100x50 after resizing the short edge, centre 50x50 kept
    pad = preprocess(wide, 50, "pad")  # 200x200 with black bars, then 50x50
    assert crop.shape == pad.shape == (3, 50, 50)
    assert crop[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=0.02)  # red at the left edge
    assert crop[:, -1, -1].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=0.02)  # blue at the right
    assert float(crop.sum(0).min()) > 0.9  # no padding anywhere
    assert pad[:, 0, 25].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=0.02)  # black bar on top
    assert pad[:, 25, 2].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=0.05)  # whole width kept
    assert pad[:, 25, 47].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=0.05)
    with pytest.raises(ValueError, match="image_mode"):
        preprocess(wide, 50, "stretch")


def test_missing_image_names_the_entry(tmp_path: Path, folder: Path) -> None:
    entries = ENTRIES + [{"id": "c3", "image": "sub/nope.png", "conversations": ENTRIES[1]["conversations"]}]
    with pytest.raises(ValueError, match=r"entry 2 \(id 'c3'\).*nope\.png.*not found"):
        LlavaDataset(_write(tmp_path, entries), folder, resolution=32)
    ds = LlavaDataset(_write(tmp_path, entries), folder, resolution=32, check_images=False)
    with pytest.raises(ValueError, match=r"id 'c3'.*cannot read image"):
        ds[2]


@pytest.mark.parametrize("bad,match", [
    ({"image": "sub/wide.png", "conversations": []}, r"entry 2: missing 'id'"),
    ({"id": "x", "conversations": ENTRIES[1]["conversations"]}, r"id 'x'.*'image'"),
    ({"id": "x", "image": "sub/wide.png"}, r"id 'x'.*'conversations'"),
    ({"id": "x", "image": "sub/wide.png", "conversations": [{"from": "human", "value": "<image>\nhi"}]},
     r"id 'x'.*human/gpt pairs"),
    ({"id": "x", "image": "sub/wide.png", "conversations": [
        {"from": "gpt", "value": "hi"}, {"from": "human", "value": "<image>"}]}, r"id 'x'.*turn 0.*'human'"),
    ({"id": "x", "image": "sub/wide.png", "conversations": [
        {"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "two"}]}, r"id 'x'.*one image"),
    ({"id": "x", "image": "sub/wide.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": " "}]}, r"id 'x'.*empty"),
    ({"id": "a1", "image": "sub/wide.png", "conversations": ENTRIES[1]["conversations"]}, r"id 'a1'.*duplicate"),
    ("just a string", r"entry 2: expected an object"),
])
def test_malformed_entries_are_named(tmp_path: Path, folder: Path, bad: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LlavaDataset(_write(tmp_path, ENTRIES + [bad]), folder, resolution=32)


def test_bad_files(tmp_path: Path, folder: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(ENTRIES[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2"):
        load_records(broken)
    obj = tmp_path / "obj.json"
    obj.write_text("{}")
    with pytest.raises(ValueError, match="JSON list"):
        load_records(obj)
    with pytest.raises(ValueError, match="no such file"):
        load_records(tmp_path / "absent.json")
    with pytest.raises(ValueError, match="image_folder"):
        LlavaDataset(_write(tmp_path, ENTRIES), tmp_path / "nowhere", resolution=32)
    with pytest.raises(ValueError, match="resolution"):
        LlavaDataset(_write(tmp_path, ENTRIES), folder, resolution=0)
