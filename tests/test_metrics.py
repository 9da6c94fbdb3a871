"""Answer metrics against hand computations of their published definitions.

VQA (Antol et al. 2015; the official VQA evaluation): acc = min(#humans that gave the answer / 3, 1),
averaged over the 10 choose 9 subsets of the human answers. ANLS (Biten et al. 2019, DocVQA):
1 - normalised Levenshtein distance, 0 at or above the threshold 0.5, max over the answers.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from explorer.train.metrics import anls, exact_match, levenshtein, normalize_vqa, score, vqa_accuracy


def test_vqa_soft_accuracy_by_hand() -> None:
    others = ["cat", "dog", "bird", "cow", "fish", "frog", "goat", "hen"]
    # 2 of 10 humans said "2": leaving out one of them leaves 1 match (1/3), else 2 (2/3)
    assert vqa_accuracy("2", ["2", "2"] + others) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)  # 0.6
    # 3 of 10: 3 subsets keep 2 matches (2/3), 7 keep all 3 (1): 0.9, not 1
    assert vqa_accuracy("2", ["2"] * 3 + others[:7]) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    assert vqa_accuracy("2", ["2"] * 4 + others[:6]) == 1.0
    assert vqa_accuracy("2", ["2"] + others + ["elk"]) == pytest.approx(9 * (1 / 3) / 10)  # 0.3
    assert vqa_accuracy("horse", ["2"] * 10) == 0.0
    # normalisation: number words, articles, punctuation, case
    assert vqa_accuracy("Two", ["2"] * 10) == 1.0
    assert vqa_accuracy("the dog.", ["dog"] * 10) == 1.0
    assert vqa_accuracy("yes!", ["yes"] * 10) == 1.0
    assert vqa_accuracy("7", ["7"]) == 1.0 and vqa_accuracy("8", ["7"]) == 0.0  # one reference: exact
    assert normalize_vqa("1,000") == "1000" and normalize_vqa("3.5") == "3.5" and normalize_vqa("dont") == "don't"


def test_anls_by_hand() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert anls("hallo", ["hello"]) == pytest.approx(1 - 1 / 5)  # 0.8
    assert anls("abcxy", ["abcde"]) == pytest.approx(1 - 2 / 5)  # NL 0.4 < 0.5: 0.6
    assert anls("abxy", ["abcd"]) == 0.0  # NL exactly 0.5: thresholded to 0
    assert anls("xyz", ["abc"]) == 0.0
    assert anls("Hello ", ["hello"]) == 1.0  # lower-cased and stripped
    assert anls("hallo", ["xyz", "hello", "hallo!"]) == pytest.approx(1 - 1 / 6)  # the best answer counts
    assert anls("hallo", ["xyz", "hello"]) == pytest.approx(0.8)


def test_exact_match_and_means() -> None:
    assert exact_match(" Red  Box", ["red box"]) == 1.0 and exact_match("red", ["red box"]) == 0.0
    means = score([("2", ["2"] * 10), ("hallo", ["hello"] * 10), ("x", ["y"])])
    assert means["exact_match"] == pytest.approx(1 / 3)
    assert means["vqa_accuracy"] == pytest.approx(1 / 3)
    assert means["anls"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)
    with pytest.raises(ValueError, match="bleu"):
        score([("a", ["a"])], metrics=["bleu"])


def test_lmms_eval_style_records_load_with_all_answers(tmp_path: Path) -> None:
    from explorer.train.llava_data import LlavaDataset

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    records = [{"question_id": 7, "image": "a.png", "question": "What colour?", "answers": ["red"] * 9 + ["Red."]},
               {"id": "c1", "image": "a.png",
                "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]}]
    (tmp_path / "eval.json").write_text(json.dumps(records))
    ds = LlavaDataset(tmp_path / "eval.json", tmp_path, 32)
    first, second = ds[0], ds[1]
    assert first.id == "7" and first.turns == [("What colour?", "red")] and len(first.answers) == 10
    assert second.answers == ("red",)
    bad = [{"question_id": 1, "image": "a.png", "question": "q", "answers": []}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="answers"):
        LlavaDataset(tmp_path / "bad.json", tmp_path, 32)
