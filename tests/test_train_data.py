"""The proxy task: deterministic, disjoint splits, answers recomputable, text unreadable when small."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from explorer.train import data as d

CFG = d.ProxyTaskConfig(resolution=128, canvas=384, val_size=50, test_size=50, tasks=d.TASKS)


def _content_key(params: d.RenderParams) -> tuple:
    """Everything that is drawn or asked, without the (split, index) labels."""
    return (params.task, params.background, params.texts, params.boxes, params.rules, params.query)


def test_same_seed_same_sample_and_seed_changes_it() -> None:
    for index in range(6):
        a = d.make_sample(CFG, "train", index)
        b = d.make_sample(CFG, "train", index)
        assert torch.equal(a.image, b.image)
        assert (a.question, a.answer, a.params) == (b.question, b.answer, b.params)
    other = d.make_sample(dataclasses.replace(CFG, seed=1), "train", 0)
    assert _content_key(other.params) != _content_key(d.make_params(CFG, "train", 0))


def test_splits_are_disjoint() -> None:
    keys = {split: {_content_key(d.make_params(CFG, split, i)) for i in range(150)} for split in d.SPLITS}
    assert all(len(k) == 150 for k in keys.values()), "samples repeat inside a split"
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]
    seeds = {split: {d.sample_seed(0, split, i) for i in range(1000)} for split in d.SPLITS}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["train"] & seeds["test"])


def _inside(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _read_back(params: d.RenderParams) -> str:
    """Answer the question from geometry alone (no role tags), as a reader of the page would."""
    q = params.query
    if params.task == "box_code":
        box = next(b for b in params.boxes if b.color_name == q.color)
        inside = [t for t in params.texts if _inside(d.element_bbox(t), (box.x0, box.y0, box.x1, box.y1))]
        assert len(inside) == 1
        return inside[0].text.lower()
    if params.task == "read_code":
        (black,) = [t for t in params.texts if t.color == d.INK]
        return black.text.lower()
    if params.task == "larger_number":
        return str(max(int(t.text) for t in params.texts if t.text.isdigit()))
    if params.task == "word_on_line":
        block = sorted((t for t in params.texts if t.color == d.INK), key=lambda t: t.y)
        return block[q.line - 1].text.split()[q.word - 1]
    if params.task == "table":
        row = next(t for t in params.texts if t.text == q.row_label and t.color == d.INK)
        col = next(t for t in params.texts if t.text == q.col_label and t.color == d.INK)
        cell = [t for t in params.texts if t.y == row.y and t.x == col.x and t is not col]
        assert len(cell) == 1
        return cell[0].text
    raise AssertionError(params.task)


@pytest.mark.parametrize("split", d.SPLITS)
def test_every_answer_is_recomputed_from_its_parameters(split: str) -> None:
    tok = d.CharTokenizer()
    seen_tasks = set()
    for i in range(60):
        s = d.make_sample(CFG, split, i)
        p = s.params
        seen_tasks.add(p.task)
        assert s.answer == d.answer_from_params(p) == _read_back(p)
        assert s.question == d.question_from_params(p)
        assert s.answer and s.answer.isalnum() and s.answer == s.answer.lower()
        # everything drawn lies on the canvas; the tokenizer covers question and answer
        for t in p.texts:
            x0, y0, x1, y1 = d.element_bbox(t)
            assert 0 <= x0 and 0 <= y0 and x1 <= p.canvas and y1 <= p.canvas
        for text in (s.question, s.answer):
            assert tok.unk_id not in tok.encode(text)
            assert tok.decode(tok.encode(text) + [tok.eos_id, 7]) == text
    assert seen_tasks == set(d.TASKS)


def test_image_tensor_is_the_resized_canvas() -> None:
    s = d.make_sample(CFG, "val", 3)
    assert s.image.shape == (3, 128, 128) and s.image.dtype == torch.float32
    assert 0.0 <= float(s.image.min()) and float(s.image.max()) <= 1.0
    native = d.render(s.params)
    assert native.size == (CFG.canvas, CFG.canvas)
    assert torch.allclose(d.to_tensor(native, 128), s.image)


def test_small_text_vanishes_when_downsampled() -> None:
    """Two documents that differ only in the answer: how much of their difference survives at R?

    The squared difference, summed and weighted by pixel area (so it is comparable across R), is
    what a reader can use to tell the answers apart. Downsampling averages fine glyph strokes away:
    small text loses almost all of it at low R, large text keeps much more.
    """
    cfg = d.ProxyTaskConfig(tasks=("box_code",), canvas=512)

    def energy(a: d.RenderParams, b: d.RenderParams, resolution: int) -> float:
        x = d.to_tensor(d.render(a), resolution).numpy()
        y = d.to_tensor(d.render(b), resolution).numpy()
        return float(((x - y) ** 2).sum()) * (a.canvas / resolution) ** 2

    ratios = {}
    for size in (10, 40):  # glyph size in canvas pixels: ~2 % and ~8 % of the page
        per_sample = []
        for i in range(4):
            p = d.make_params(cfg, "test", i)
            target = p.answer_element()
            p = dataclasses.replace(p, texts=tuple(dataclasses.replace(t, size=size) if t is target else t
                                                   for t in p.texts))
            q = d.replace_answer(p, "KXW" if target.text != "KXW" else "ACD")
            full = energy(p, q, 512)
            per_sample.append([energy(p, q, r) / full for r in (64, 128, 256)])
        ratios[size] = np.mean(per_sample, axis=0)
    small, large = ratios[10], ratios[40]
    assert np.all(np.diff(small) > 0) and np.all(np.diff(large) > 0)  # more pixels, more detail kept
    assert small[0] < 0.05  # 10-px glyphs at 64/512 scale: ~1.3 px tall, the difference is gone
    assert large[0] > 3 * small[0]
    assert large[2] > 0.6  # 40-px glyphs at 256: most of the difference is still there


def test_tokenizer_vocabulary_is_documented() -> None:
    tok = d.CharTokenizer()
    assert tok.vocab[: len(d.SPECIAL_TOKENS)] == ["<pad>", "<bos>", "<eos>", "<sep>", "<unk>"]
    assert tok.vocab_size == 5 + len(d.PROXY_CHARS) == 48
    assert tok.encode("What?") == tok.encode("what?")
    assert tok.encode("#")[0] == tok.unk_id
    with pytest.raises(ValueError, match="chars"):
        d.CharTokenizer(chars="aa")


def test_dataset_protocol() -> None:
    ds = d.ProxyTextDataset(CFG, "val")
    assert len(ds) == 50
    assert ds[4].answer == d.make_sample(CFG, "val", 4).answer
    assert ds[0].turns == [(ds[0].question, ds[0].answer)]
    with pytest.raises(IndexError):
        ds[50]


@pytest.mark.parametrize("field,value,match", [
    ("resolution", 8, "resolution"),
    ("canvas", 64, "canvas"),
    ("tasks", ("box_code", "ocr"), "tasks"),
    ("task_weights", (1.0,), "task_weights"),
    ("text_size", (0.1, 0.05), "text_size"),
    ("code_length", 0, "code_length"),
    ("code_chars", "ab", "code_chars"),
    ("number_range", (5, 9), "number_range"),
    ("val_size", 0, "val_size"),
])
def test_bad_config_names_the_field(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(CFG, **{field: value})
    with pytest.raises(ValueError, match="split"):
        d.make_params(CFG, "dev", 0)


def test_task_weights_select_tasks() -> None:
    cfg = dataclasses.replace(CFG, tasks=("table", "box_code"), task_weights=(1.0, 0.0))
    assert {d.make_params(cfg, "train", i).task for i in range(20)} == {"table"}
