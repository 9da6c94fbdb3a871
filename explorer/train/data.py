"""A text-rich proxy task: synthetic documents whose questions can only be answered by reading.

Why a synthetic task: the explorer needs an accuracy signal that (a) depends on input resolution
the way TextVQA/DocVQA do for FastVLM (small text is unreadable at low resolution), (b) can be
trained from scratch on a CPU in minutes, and (c) needs no download. Every sample is rendered on
the fly at a native canvas size (512 px by default) and then resized to the model resolution R,
so text whose height is 2 % of the canvas is ~2.5 px tall at R=128 and ~7.5 px tall at R=384.

A sample is fully described by its :class:`RenderParams` (a frozen dataclass: every text element,
box and rule with its position, size, font and colour, plus the query). :func:`render` draws it,
:func:`question_from_params` and :func:`answer_from_params` recompute the question and answer
from it, and :func:`make_params` builds it deterministically from ``(seed, split, index)``.

Tasks (``ProxyTaskConfig.tasks``):

- ``box_code``: 2-4 boxes of different colours, each holding a short code;
  "what is the code in the red box?" -> the code, lower-cased ("k7x").
- ``larger_number``: two numbers in independent font sizes (size is no cue to value) among
  distractor words; "which number is larger?" -> the larger number ("83").
- ``word_on_line``: 3-6 lines of words; "what is word 2 on line 3?" -> the word.
- ``table``: a ruled table with row and column labels; "what is the price of plum?" -> the cell.
- ``read_code``: one black code (boxed half of the time) among grey words; "what is the code?"
  -> the code. Not in the default mix: the easiest task, for short CPU runs.

Answers use lower-case letters and digits only, questions lower-case letters, digits, spaces and
'?', so :class:`CharTokenizer` (vocabulary documented there) covers both.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import Dataset

from explorer.checks import is_int, is_number, require

TASKS: tuple[str, ...] = ("box_code", "larger_number", "word_on_line", "table", "read_code")
#: The default mix; ``read_code`` (one code among grey clutter) is the easiest, for short CPU runs.
DEFAULT_TASKS: tuple[str, ...] = ("box_code", "larger_number", "word_on_line", "table")
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Colours of the boxes in ``box_code`` (name -> RGB). Distinct even when blurred.
BOX_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (40, 70, 220),
    "orange": (245, 140, 20),
    "purple": (140, 50, 170),
}
#: Characters of box codes: capitals and digits without look-alikes (0/O, 1/I, 5/S, 2/Z, 8/B).
CODE_CHARS = "ACDEFHJKLMNPRTUVWXY34679"
#: Words of ``word_on_line`` lines and of distractor text.
WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "map", "red", "box", "pen", "cup", "hat", "key", "owl", "fox",
    "tree", "lamp", "door", "ship", "fish", "bird", "moon", "star", "rock", "leaf", "rain", "milk",
)
ROW_LABELS: tuple[str, ...] = ("apple", "pear", "plum", "fig", "lime", "kiwi", "grape", "melon")
COL_LABELS: tuple[str, ...] = ("price", "count", "size", "stock", "weight")
FONTS: tuple[str, ...] = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")

INK = (20, 20, 20)
GREY_INK = (110, 110, 110)


# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ProxyTaskConfig:
    """What the proxy task draws. Sizes are fractions of the canvas side, so the same config
    renders the same document at any canvas size; readability then depends only on
    ``resolution * text fraction`` (pixels of glyph height the model sees)."""

    resolution: int = 256  # model input side R; the canvas is resized to R x R
    canvas: int = 512  # native rendering side in pixels
    tasks: tuple[str, ...] = DEFAULT_TASKS
    task_weights: Optional[tuple[float, ...]] = None  # default: uniform over ``tasks``
    text_size: tuple[float, float] = (0.02, 0.09)  # glyph size range (fraction of canvas), log-uniform
    code_length: int = 3
    code_chars: str = CODE_CHARS  # characters of codes (capitals and digits)
    number_range: tuple[int, int] = (10, 99)  # inclusive; numbers of larger_number and table cells
    distractors: int = 3  # at most this many distractor text lines per document
    fonts: tuple[str, ...] = FONTS
    seed: int = 0
    train_size: int = 1_000_000  # virtual: samples are generated, not stored
    val_size: int = 500
    test_size: int = 500

    def __post_init__(self) -> None:
        """Raise ValueError naming the bad field: an invalid config cannot exist."""
        require(is_int(self.resolution) and 16 <= self.resolution <= 4096, "resolution", self.resolution, "an integer in [16, 4096]")
        require(is_int(self.canvas) and 128 <= self.canvas <= 4096, "canvas", self.canvas, "an integer in [128, 4096]")
        require(len(self.tasks) > 0 and all(t in TASKS for t in self.tasks)
               and len(set(self.tasks)) == len(self.tasks), "tasks", self.tasks, f"a non-empty list of distinct task names from {list(TASKS)}")
        if self.task_weights is not None:
            require(len(self.task_weights) == len(self.tasks) and all(w >= 0 for w in self.task_weights)
                   and sum(self.task_weights) > 0, "task_weights", self.task_weights, "one non-negative weight per task, not all zero")
        ok = len(self.text_size) == 2 and all(is_number(v) for v in self.text_size)
        require(ok and 0.005 <= self.text_size[0] <= self.text_size[1] <= 0.5, "text_size", self.text_size, "(min, max) glyph size as fractions of the canvas with 0.005 <= min <= max <= 0.5")
        require(is_int(self.code_length) and 1 <= self.code_length <= 6, "code_length", self.code_length, "an integer in [1, 6]")
        require(isinstance(self.code_chars, str) and len(self.code_chars) >= 2
               and len(set(self.code_chars)) == len(self.code_chars)
               and all(c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" for c in self.code_chars), "code_chars", self.code_chars, "at least 2 distinct capital letters or digits")
        ok = len(self.number_range) == 2 and all(is_int(v) for v in self.number_range)
        require(ok and 0 <= self.number_range[0]
               and self.number_range[1] - self.number_range[0] >= 10 and self.number_range[1] < 100_000, "number_range", self.number_range, "(low, high) integers with 0 <= low, high - low >= 10, high < 100000")
        require(is_int(self.distractors) and 0 <= self.distractors <= 10, "distractors", self.distractors, "an integer in [0, 10]")
        require(len(self.fonts) > 0 and all(isinstance(f, str) for f in self.fonts), "fonts", self.fonts, "a non-empty list of font file names (e.g. DejaVuSans.ttf)")
        for name in ("train_size", "val_size", "test_size"):
            value = getattr(self, name)
            require(is_int(value) and value > 0, name, value, "a positive integer")
        require(is_int(self.seed) and self.seed >= 0, "seed", self.seed, "a non-negative integer")

    def split_size(self, split: str) -> int:
        require(split in SPLITS, "split", split, f"one of {list(SPLITS)}")
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size}[split]




# --------------------------------------------------------------------------------------------
# rendering parameters


@dataclass(frozen=True)
class TextElement:
    """One string drawn with its left/ascender anchor at (x, y)."""

    text: str
    x: int
    y: int
    size: int  # font size in canvas pixels
    font: str
    color: tuple[int, int, int] = INK
    role: str = "distractor"  # code | number | line | cell | row_label | col_label | distractor
    tag: str = ""  # colour name of the box that holds a code
    row: int = -1  # line index (word_on_line) or table row
    col: int = -1  # table column


@dataclass(frozen=True)
class BoxElement:
    """A coloured rectangle outline (box_code)."""

    x0: int
    y0: int
    x1: int
    y1: int
    color_name: str
    width: int


@dataclass(frozen=True)
class RuleElement:
    """A straight line (table rules, underlines)."""

    x0: int
    y0: int
    x1: int
    y1: int
    width: int
    color: tuple[int, int, int] = GREY_INK


@dataclass(frozen=True)
class Query:
    """What the question asks; which fields matter depends on the task."""

    color: str = ""  # box_code
    line: int = 0  # word_on_line, 1-based
    word: int = 0  # word_on_line, 1-based
    row_label: str = ""  # table
    col_label: str = ""  # table


@dataclass(frozen=True)
class RenderParams:
    """Everything needed to draw a sample and to recompute its question and answer."""

    task: str
    canvas: int
    background: tuple[int, int, int]
    texts: tuple[TextElement, ...]
    query: Query
    boxes: tuple[BoxElement, ...] = ()
    rules: tuple[RuleElement, ...] = ()
    seed: int = 0
    split: str = "train"
    index: int = 0

    def answer_element(self) -> TextElement:
        """The text element that holds the answer (for region-based checks)."""
        return _answer_element(self)


# --------------------------------------------------------------------------------------------
# questions and answers, recomputed from the parameters


def question_from_params(params: RenderParams) -> str:
    q = params.query
    if params.task == "box_code":
        return f"what is the code in the {q.color} box?"
    if params.task == "larger_number":
        return "which number is larger?"
    if params.task == "word_on_line":
        return f"what is word {q.word} on line {q.line}?"
    if params.task == "table":
        return f"what is the {q.col_label} of {q.row_label}?"
    if params.task == "read_code":
        return "what is the code?"
    raise ValueError(f"invalid task={params.task!r}: one of {list(TASKS)}")


def _answer_element(params: RenderParams) -> TextElement:
    q = params.query
    if params.task == "box_code":
        found = [t for t in params.texts if t.role == "code" and t.tag == q.color]
    elif params.task == "read_code":
        found = [t for t in params.texts if t.role == "code"]
    elif params.task == "larger_number":
        numbers = [t for t in params.texts if t.role == "number"]
        found = [max(numbers, key=lambda t: int(t.text))] if numbers else []
    elif params.task == "word_on_line":
        found = [t for t in params.texts if t.role == "line" and t.row == q.line - 1]
    elif params.task == "table":
        rows = [t.row for t in params.texts if t.role == "row_label" and t.text == q.row_label]
        cols = [t.col for t in params.texts if t.role == "col_label" and t.text == q.col_label]
        found = [t for t in params.texts if t.role == "cell" and rows and cols
                 and t.row == rows[0] and t.col == cols[0]]
    else:
        raise ValueError(f"invalid task={params.task!r}: one of {list(TASKS)}")
    if len(found) != 1:
        raise ValueError(f"render parameters of {params.split}/{params.index} do not determine one answer "
                         f"(task {params.task}, query {params.query})")
    return found[0]


def answer_from_params(params: RenderParams) -> str:
    """Read the answer off the parameters (what a perfect reader of the image would say)."""
    element = _answer_element(params)
    if params.task == "word_on_line":
        return element.text.split()[params.query.word - 1].lower()
    return element.text.lower()


# --------------------------------------------------------------------------------------------
# fonts and layout helpers


@functools.lru_cache(maxsize=512)
def get_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """A FreeType font; Pillow's built-in scalable font when ``name`` is not installed."""
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        return ImageFont.load_default(size=size)  # type: ignore[return-value]


def text_bbox(text: str, x: int, y: int, size: int, font: str) -> tuple[int, int, int, int]:
    left, top, right, bottom = get_font(font, size).getbbox(text, anchor="la")
    return x + left, y + top, x + right, y + bottom


def element_bbox(element: TextElement) -> tuple[int, int, int, int]:
    return text_bbox(element.text, element.x, element.y, element.size, element.font)


def _text_extent(text: str, size: int, font: str) -> tuple[int, int]:
    """Width and height of the ink box from the anchor (ascender line)."""
    _, _, right, bottom = get_font(font, size).getbbox(text, anchor="la")
    return right, bottom


class _Layout:
    """Rejection placement of rectangles that must not overlap (with a gap)."""

    def __init__(self, canvas: int, rng: random.Random) -> None:
        self.canvas = canvas
        self.rng = rng
        self.margin = max(2, canvas // 40)
        self.gap = max(2, canvas // 100)
        self.used: list[tuple[int, int, int, int]] = []

    def free(self, box: tuple[int, int, int, int]) -> bool:
        x0, y0, x1, y1 = box
        if x0 < self.margin or y0 < self.margin or x1 > self.canvas - self.margin or y1 > self.canvas - self.margin:
            return False
        g = self.gap
        return all(x1 + g <= u0 or u1 + g <= x0 or y1 + g <= v0 or v1 + g <= y0 for u0, v0, u1, v1 in self.used)

    def place(self, width: int, height: int, tries: int = 200) -> Optional[tuple[int, int]]:
        """Top-left corner of a free width x height rectangle, reserved; None when none found."""
        hi_x = self.canvas - self.margin - width
        hi_y = self.canvas - self.margin - height
        if hi_x < self.margin or hi_y < self.margin:
            return None
        for _ in range(tries):
            x = self.rng.randint(self.margin, hi_x)
            y = self.rng.randint(self.margin, hi_y)
            if self.free((x, y, x + width, y + height)):
                self.used.append((x, y, x + width, y + height))
                return x, y
        return None

    def reserve(self, box: tuple[int, int, int, int]) -> None:
        self.used.append(box)


def _draw_size(rng: random.Random, cfg: ProxyTaskConfig) -> int:
    """A font size (canvas pixels), log-uniform over the configured fraction range."""
    lo, hi = cfg.text_size
    frac = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return max(6, round(frac * cfg.canvas))


def _min_size(cfg: ProxyTaskConfig) -> int:
    return max(6, round(cfg.text_size[0] * cfg.canvas))


def _distractors(rng: random.Random, cfg: ProxyTaskConfig, layout: _Layout, font: str) -> list[TextElement]:
    """Grey lines of random words, placed where they fit: clutter the reader must ignore."""
    out: list[TextElement] = []
    for _ in range(rng.randint(0, cfg.distractors)):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        size = _draw_size(rng, cfg)
        w, h = _text_extent(text, size, font)
        spot = layout.place(w, h)
        if spot is not None:
            out.append(TextElement(text, spot[0], spot[1], size, font, GREY_INK))
    return out


# --------------------------------------------------------------------------------------------
# the four tasks


def _make_box_code(rng: random.Random, cfg: ProxyTaskConfig, font: str) -> tuple[list, list, list, Query]:
    layout = _Layout(cfg.canvas, rng)
    colours = rng.sample(sorted(BOX_COLOURS), rng.randint(2, min(4, len(BOX_COLOURS))))
    codes: set[str] = set()
    texts: list[TextElement] = []
    boxes: list[BoxElement] = []
    for colour in colours:
        code = "".join(rng.choice(cfg.code_chars) for _ in range(cfg.code_length))
        while code in codes and len(codes) < len(cfg.code_chars) ** cfg.code_length:
            code = "".join(rng.choice(cfg.code_chars) for _ in range(cfg.code_length))
        codes.add(code)
        size = _draw_size(rng, cfg)
        while True:
            w, h = _text_extent(code, size, font)
            pad = max(3, size // 3)
            border = max(2, cfg.canvas // 150)
            spot = layout.place(w + 2 * (pad + border), h + 2 * (pad + border))
            if spot is not None or size <= _min_size(cfg):
                break
            size = max(_min_size(cfg), int(size * 0.8))
        if spot is None:
            raise RuntimeError("could not place a box; canvas too small for the text sizes")
        x, y = spot
        bw, bh = w + 2 * (pad + border), h + 2 * (pad + border)
        boxes.append(BoxElement(x, y, x + bw, y + bh, colour, border))
        texts.append(TextElement(code, x + pad + border, y + pad + border, size, font, INK,
                                 role="code", tag=colour))
    texts += _distractors(rng, cfg, layout, font)
    return texts, boxes, [], Query(color=rng.choice(colours))


def _make_larger_number(rng: random.Random, cfg: ProxyTaskConfig, font: str) -> tuple[list, list, list, Query]:
    layout = _Layout(cfg.canvas, rng)
    lo, hi = cfg.number_range
    a, b = rng.sample(range(lo, hi + 1), 2)
    texts: list[TextElement] = []
    for value in (a, b):
        size = _draw_size(rng, cfg)
        while True:
            w, h = _text_extent(str(value), size, font)
            spot = layout.place(w, h)
            if spot is not None or size <= _min_size(cfg):
                break
            size = max(_min_size(cfg), int(size * 0.8))
        if spot is None:
            raise RuntimeError("could not place a number; canvas too small for the text sizes")
        texts.append(TextElement(str(value), spot[0], spot[1], size, font, INK, role="number"))
    texts += _distractors(rng, cfg, layout, font)
    return texts, [], [], Query()


def _make_word_on_line(rng: random.Random, cfg: ProxyTaskConfig, font: str) -> tuple[list, list, list, Query]:
    layout = _Layout(cfg.canvas, rng)
    n_lines = rng.randint(3, 6)
    n_words = rng.randint(3, 5)
    lines = [" ".join(rng.choice(WORDS) for _ in range(n_words)) for _ in range(n_lines)]
    size = _draw_size(rng, cfg)
    usable = cfg.canvas - 2 * layout.margin
    while size > _min_size(cfg):  # shrink until the block fits the page
        width = max(_text_extent(line, size, font)[0] for line in lines)
        if width <= usable and n_lines * int(size * 1.5) <= usable:
            break
        size = max(_min_size(cfg), int(size * 0.9))
    step = int(size * 1.5)
    width = max(_text_extent(line, size, font)[0] for line in lines)
    height = step * (n_lines - 1) + _text_extent(lines[-1], size, font)[1]
    spot = layout.place(width, height)
    if spot is None:
        raise RuntimeError("could not place the text block; canvas too small for the text sizes")
    texts = [TextElement(line, spot[0], spot[1] + i * step, size, font, INK, role="line", row=i)
             for i, line in enumerate(lines)]
    texts += _distractors(rng, cfg, layout, font)
    return texts, [], [], Query(line=rng.randint(1, n_lines), word=rng.randint(1, n_words))


def _make_table(rng: random.Random, cfg: ProxyTaskConfig, font: str) -> tuple[list, list, list, Query]:
    layout = _Layout(cfg.canvas, rng)
    n_rows = rng.randint(2, 4)
    n_cols = rng.randint(2, 3)
    row_labels = rng.sample(ROW_LABELS, n_rows)
    col_labels = rng.sample(COL_LABELS, n_cols)
    lo, hi = cfg.number_range
    cells = [[str(rng.randint(lo, hi)) for _ in range(n_cols)] for _ in range(n_rows)]
    size = _draw_size(rng, cfg)
    usable = cfg.canvas - 2 * layout.margin

    def geometry(sz: int) -> tuple[int, list[int], int]:
        pad = max(2, sz // 3)
        first = max(_text_extent(t, sz, font)[0] for t in row_labels) + 2 * pad
        widths = [max(_text_extent(c, sz, font)[0] for c in [col_labels[j]] + [r[j] for r in cells]) + 2 * pad
                  for j in range(n_cols)]
        return first, widths, int(sz * 1.6)

    while size > _min_size(cfg):
        first, widths, row_h = geometry(size)
        if first + sum(widths) <= usable and row_h * (n_rows + 1) <= usable:
            break
        size = max(_min_size(cfg), int(size * 0.9))
    first, widths, row_h = geometry(size)
    pad = max(2, size // 3)
    total_w, total_h = first + sum(widths), row_h * (n_rows + 1)
    spot = layout.place(total_w, total_h)
    if spot is None:
        raise RuntimeError("could not place the table; canvas too small for the text sizes")
    x0, y0 = spot
    lw = max(1, cfg.canvas // 256)
    col_x = [x0, x0 + first]
    for w in widths:
        col_x.append(col_x[-1] + w)
    rules = [RuleElement(x0, y0 + r * row_h, x0 + total_w, y0 + r * row_h, lw) for r in range(n_rows + 2)]
    rules += [RuleElement(x, y0, x, y0 + total_h, lw) for x in col_x]
    text_dy = (row_h - size) // 2
    texts: list[TextElement] = []
    for j, label in enumerate(col_labels):
        texts.append(TextElement(label, col_x[j + 1] + pad, y0 + text_dy, size, font, INK, role="col_label", col=j))
    for i, label in enumerate(row_labels):
        y = y0 + (i + 1) * row_h + text_dy
        texts.append(TextElement(label, x0 + pad, y, size, font, INK, role="row_label", row=i))
        for j in range(n_cols):
            texts.append(TextElement(cells[i][j], col_x[j + 1] + pad, y, size, font, INK, role="cell", row=i, col=j))
    texts += _distractors(rng, cfg, layout, font)
    return texts, [], rules, Query(row_label=rng.choice(row_labels), col_label=rng.choice(col_labels))


def _make_read_code(rng: random.Random, cfg: ProxyTaskConfig, font: str) -> tuple[list, list, list, Query]:
    """One black code, boxed half of the time, among grey distractor words."""
    layout = _Layout(cfg.canvas, rng)
    code = "".join(rng.choice(cfg.code_chars) for _ in range(cfg.code_length))
    size = _draw_size(rng, cfg)
    boxed = rng.random() < 0.5
    while True:
        w, h = _text_extent(code, size, font)
        pad = max(3, size // 3) if boxed else 0
        border = max(2, cfg.canvas // 150) if boxed else 0
        spot = layout.place(w + 2 * (pad + border), h + 2 * (pad + border))
        if spot is not None or size <= _min_size(cfg):
            break
        size = max(_min_size(cfg), int(size * 0.8))
    if spot is None:
        raise RuntimeError("could not place the code; canvas too small for the text sizes")
    x, y = spot
    boxes = []
    if boxed:
        boxes.append(BoxElement(x, y, x + w + 2 * (pad + border), y + h + 2 * (pad + border),
                                rng.choice(sorted(BOX_COLOURS)), border))
    texts = [TextElement(code, x + pad + border, y + pad + border, size, font, INK, role="code")]
    texts += _distractors(rng, cfg, layout, font)
    return texts, boxes, [], Query()


_MAKERS = {
    "box_code": _make_box_code,
    "larger_number": _make_larger_number,
    "word_on_line": _make_word_on_line,
    "table": _make_table,
    "read_code": _make_read_code,
}


# --------------------------------------------------------------------------------------------
# public generation API


def sample_seed(seed: int, split: str, index: int) -> int:
    """The per-sample RNG seed: a hash of (seed, split, index), so splits draw disjoint streams."""
    digest = hashlib.sha256(f"explorer-proxy/{seed}/{split}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def make_params(cfg: ProxyTaskConfig, split: str, index: int) -> RenderParams:
    """Draw the parameters of sample ``index`` of ``split``; deterministic in (cfg, split, index)."""
    require(split in SPLITS, "split", split, f"one of {list(SPLITS)}")
    require(is_int(index) and index >= 0, "index", index, "a non-negative integer")
    rng = random.Random(sample_seed(cfg.seed, split, index))
    task = rng.choices(cfg.tasks, weights=cfg.task_weights)[0] if len(cfg.tasks) > 1 else cfg.tasks[0]
    font = rng.choice(cfg.fonts)
    background = tuple(rng.randint(225, 255) for _ in range(3))
    texts, boxes, rules, query = _MAKERS[task](rng, cfg, font)
    return RenderParams(task=task, canvas=cfg.canvas, background=background,  # type: ignore[arg-type]
                        texts=tuple(texts), query=query, boxes=tuple(boxes), rules=tuple(rules),
                        seed=cfg.seed, split=split, index=index)


def render(params: RenderParams) -> Image.Image:
    """Draw the document at its native canvas size (RGB)."""
    image = Image.new("RGB", (params.canvas, params.canvas), params.background)
    draw = ImageDraw.Draw(image)
    for rule in params.rules:
        draw.line([(rule.x0, rule.y0), (rule.x1, rule.y1)], fill=rule.color, width=rule.width)
    for box in params.boxes:
        draw.rectangle([box.x0, box.y0, box.x1, box.y1], outline=BOX_COLOURS[box.color_name], width=box.width)
    for t in params.texts:
        draw.text((t.x, t.y), t.text, fill=t.color, font=get_font(t.font, t.size), anchor="la")
    return image


def to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """Resize (antialiased bicubic) to ``resolution`` square and scale to [0, 1]: ``[3, R, R]``."""
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    # Converted in numpy: torch's threaded elementwise kernels cost ~10 ms here on a busy CPU.
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) * np.float32(1 / 255))


@dataclass
class ProxySample:
    """One question about one rendered document."""

    image: torch.Tensor  # [3, R, R] in [0, 1]
    question: str
    answer: str
    params: RenderParams

    @property
    def turns(self) -> list[tuple[str, str]]:
        return [(self.question, self.answer)]


def make_sample(cfg: ProxyTaskConfig, split: str, index: int) -> ProxySample:
    params = make_params(cfg, split, index)
    image = to_tensor(render(params), cfg.resolution)
    return ProxySample(image, question_from_params(params), answer_from_params(params), params)


class ProxyTextDataset(Dataset):
    """The proxy task as a map-style dataset over one split (samples rendered on access)."""

    def __init__(self, cfg: ProxyTaskConfig, split: str = "train", size: Optional[int] = None) -> None:
        self.cfg = cfg
        require(split in SPLITS, "split", split, f"one of {list(SPLITS)}")
        self.split = split
        self.size = cfg.split_size(split) if size is None else size
        require(is_int(self.size) and self.size > 0, "size", self.size, "a positive integer")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> ProxySample:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.split} split of {self.size} samples")
        return make_sample(self.cfg, self.split, index)

    def __iter__(self) -> Iterator[ProxySample]:
        for i in range(self.size):
            yield self[i]


# --------------------------------------------------------------------------------------------
# tokenizer


PAD, BOS, EOS, SEP, UNK = "<pad>", "<bos>", "<eos>", "<sep>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, SEP, UNK)
#: Characters of the proxy task: questions and answers are lower-case ASCII letters, digits,
#: the space and '?'. A few punctuation marks are included for short free text.
PROXY_CHARS = " abcdefghijklmnopqrstuvwxyz0123456789?.,'-:"
#: Printable ASCII, for free-form (e.g. LLaVA-format) text with the from-scratch decoder.
ASCII_CHARS = "".join(chr(c) for c in range(32, 127))


@dataclass(frozen=True)
class CharTokenizer:
    """Character-level tokenizer for the from-scratch decoder.

    Vocabulary: ids 0-4 are ``<pad> <bos> <eos> <sep> <unk>``, then one id per character of
    ``chars`` in order (default :data:`PROXY_CHARS`: 43 characters, 48 ids in all). With
    ``lowercase`` the text is lower-cased first; characters outside ``chars`` map to ``<unk>``.
    A prompt is ``<bos> question <sep>``, an answer ``answer <eos>``.
    """

    chars: str = PROXY_CHARS
    lowercase: bool = True
    _index: dict = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        require(len(set(self.chars)) == len(self.chars) and len(self.chars) > 0, "chars", self.chars, "a non-empty string of distinct characters")
        object.__setattr__(self, "_index", {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(self.chars)})

    pad_id = 0
    bos_id = 1
    eos_id = 2
    sep_id = 3
    unk_id = 4

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.chars)

    @property
    def vocab(self) -> list[str]:
        return list(SPECIAL_TOKENS) + list(self.chars)

    def encode(self, text: str) -> list[int]:
        if self.lowercase:
            text = text.lower()
        return [self._index.get(c, self.unk_id) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        """Characters of ``ids``, stopping at ``<eos>``; other special tokens are dropped."""
        out = []
        n_special = len(SPECIAL_TOKENS)
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i >= n_special and i < self.vocab_size:
                out.append(self.chars[i - n_special])
        return "".join(out)

    def to_dict(self) -> dict:
        return {"chars": self.chars, "lowercase": self.lowercase}


def replace_answer(params: RenderParams, new_text: str) -> RenderParams:
    """The same document with the answer element's text replaced (for readability checks)."""
    target = _answer_element(params)
    texts = tuple(dataclasses.replace(t, text=new_text) if t is target else t for t in params.texts)
    return dataclasses.replace(params, texts=texts)
