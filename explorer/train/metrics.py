"""Standard VLM answer metrics: exact match, VQA soft accuracy and ANLS.

- **Exact match**: the prediction equals one of the reference answers after lower-casing and
  collapsing whitespace (:func:`~explorer.train.vlm.normalize_answer`).
- **VQA accuracy** (VQAv2 / TextVQA, Antol et al. 2015 and the official evaluation script):
  with the human answers normalised (lower case, punctuation, number words to digits, articles
  and common contractions), an answer scores ``min(#humans who gave it / 3, 1)``, averaged over
  the 10 subsets of 9 of the 10 human answers, i.e. for each human answer left out, the
  prediction is matched against the other nine. With a single reference answer there is no
  subset to leave out: the score is exact match of the normalised strings.
- **ANLS** (DocVQA, Biten et al. 2019): ``max over answers of 1 - NL(pred, answer)`` where NL is
  the Levenshtein distance divided by the longer string's length, and 0 when NL >= 0.5
  (``threshold``); strings are lower-cased and stripped first.

Scores are fractions in [0, 1]; :func:`score` averages them over an evaluation set.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

METRICS = ("exact_match", "vqa_accuracy", "anls")

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "wasnt": "wasn't", "werent": "weren't", "didnt": "didn't", "im": "i'm",
                 "ive": "i've", "youre": "you're", "theyre": "they're", "thats": "that's", "whats": "what's",
                 "itll": "it'll", "couldnt": "couldn't", "shouldnt": "shouldn't", "wouldnt": "wouldn't"}
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")
_COMMA_IN_NUMBER = re.compile(r"\d,\d")


def normalize_exact(text: str) -> str:
    return " ".join(str(text).lower().split())


def normalize_vqa(text: str) -> str:
    """The VQA evaluation's answer normalisation.

    Punctuation touching a space (or any, when the text holds a digit-comma-digit number) is
    deleted, other punctuation becomes a space; a period not followed by a digit is deleted;
    number words become digits, articles go, and common apostrophe-less contractions get theirs.
    """
    text = " ".join(str(text).replace("\n", " ").replace("\t", " ").strip().lower().split())
    number_comma = _COMMA_IN_NUMBER.search(text) is not None
    for p in _PUNCTUATION:
        if p not in text:
            continue
        if number_comma or (p + " ") in text or (" " + p) in text:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD_NOT_DECIMAL.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    pred = normalize_exact(prediction)
    return float(any(pred == normalize_exact(a) for a in answers))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA soft accuracy: mean over leave-one-out subsets of min(matches / 3, 1)."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    pred = normalize_vqa(prediction)
    refs = [normalize_vqa(a) for a in answers]
    if len(refs) == 1:
        return float(pred == refs[0])
    total = 0.0
    for i in range(len(refs)):
        others = refs[:i] + refs[i + 1:]
        total += min(1.0, sum(r == pred for r in others) / 3.0)
    return total / len(refs)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one prediction (the max over answers)."""
    if not answers:
        raise ValueError("anls needs at least one reference answer")
    pred = " ".join(str(prediction).strip().lower().split())
    best = 0.0
    for answer in answers:
        ref = " ".join(str(answer).strip().lower().split())
        longest = max(len(pred), len(ref))
        nl = levenshtein(pred, ref) / longest if longest else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


_FUNCTIONS = {"exact_match": exact_match, "vqa_accuracy": vqa_accuracy, "anls": anls}


def score_one(prediction: str, answers: Sequence[str], metrics: Iterable[str] = METRICS) -> dict[str, float]:
    return {m: _FUNCTIONS[m](prediction, answers) for m in metrics}


def score(pairs: Iterable[tuple[str, Sequence[str]]], metrics: Iterable[str] = METRICS) -> dict[str, float]:
    """Mean of each metric over (prediction, reference answers) pairs."""
    metrics = list(metrics)
    bad = [m for m in metrics if m not in _FUNCTIONS]
    if bad:
        raise ValueError(f"invalid metrics={bad}: choose from {list(METRICS)}")
    sums = {m: 0.0 for m in metrics}
    n = 0
    for prediction, answers in pairs:
        for m, v in score_one(prediction, answers, metrics).items():
            sums[m] += v
        n += 1
    return {m: s / n if n else 0.0 for m, s in sums.items()}


def mean_by(records: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each key over records (for per-sample metric dicts)."""
    sums: dict[str, float] = {}
    n = 0
    for r in records:
        for k, v in r.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
    return {k: v / n for k, v in sums.items()} if n else {}
