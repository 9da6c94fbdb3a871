"""The literature table: published VLM results, one row per (model, benchmark), every row sourced.

Files live in ``results/reference/literature/<source_id>.csv`` (schema in that folder's README).
:func:`load_literature` reads and checks them all before anything is fitted: every problem is a
``ValueError`` naming the file, the row (as a spreadsheet numbers it) and the column.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Optional, Union

import pandas as pd

from explorer.data.reference import REFERENCE_DIR

LITERATURE_DIR = REFERENCE_DIR / "literature"

#: The columns of a literature file, in order.
COLUMNS: tuple[str, ...] = (
    "model", "source_id", "source", "encoder_family", "encoder", "encoder_config", "encoder_params_m",
    "resolution", "token_strategy", "visual_tokens", "llm", "llm_params_b", "train_data", "benchmark",
    "split", "score", "score_max", "notes",
)
#: Columns a row must fill.
REQUIRED: tuple[str, ...] = ("model", "source_id", "source", "encoder_family", "resolution", "token_strategy",
                             "visual_tokens", "llm", "llm_params_b", "benchmark", "score", "score_max")

#: benchmark -> the group whose scaling it shares (text-rich: reading text in images; knowledge:
#: reasoning over a diagram or a subject; general: perception and everyday questions).
BENCHMARK_GROUPS: dict[str, str] = {
    "textvqa": "text", "docvqa": "text", "chartqa": "text", "ocrbench": "text", "infovqa": "text",
    "ai2d": "knowledge", "mmmu": "knowledge", "scienceqa": "knowledge", "mathvista": "knowledge",
    "mmstar": "knowledge",
    "gqa": "general", "seedbench": "general", "seedbench_all": "general", "mmbench": "general",
    "mmbench_cn": "general", "pope": "general", "vqav2": "general", "mme_p": "general", "mme_c": "knowledge",
    "mmvet": "general", "realworldqa": "general", "vizwiz": "general", "llava_wild": "general",
    # The FastVLM README figure's "average of 5 VLM benchmarks" (which five is not stated there).
    "avg5": "general",
}
#: The documented averages a design point can be asked for (each the mean of its benchmarks).
AVERAGES: dict[str, tuple[str, ...]] = {
    "text_rich": ("textvqa", "docvqa", "chartqa", "ocrbench"),
    "general": ("gqa", "mmmu", "seedbench", "mmbench", "pope"),
}
ENCODER_FAMILIES: tuple[str, ...] = ("clip_vit", "siglip", "convnext", "fastvithd", "fastvit_mci2", "internvit",
                                     "qwen_vit", "eva_clip", "dinov2", "mobilevit", "multi", "other")
TOKEN_STRATEGIES: tuple[str, ...] = ("resize", "pad", "anyres", "dynamic_tiles", "dynamic_resolution",
                                     "pixel_shuffle", "pooling", "resampler", "pruning", "multi_encoder")
#: The explorer registry's encoders and the family each belongs to.
REGISTRY_FAMILY: dict[str, str] = {
    "fastvithd": "fastvithd", "fastvit_mci2": "fastvit_mci2", "vit_l14_clip": "clip_vit",
    "siglip_so400m": "siglip", "convnext_l": "convnext", "convnext_xxl": "convnext",
}
#: Allowed score scales: percentages, fractions, OCRBench points, MME perception / cognition sums.
SCORE_MAX: tuple[float, ...] = (1.0, 100.0, 1000.0, 2000.0, 800.0)

_SOURCE_FORM = re.compile(r"^(github:[\w.-]+/[\w.-]+@[0-9a-f]{7,40}:\S+|https?://\S+)")

#: LLM families by name prefix (lower case), longest first; the family decides the LLM's quality
#: term of the accuracy model (a Qwen2-7B and a Vicuna-7B are the same size, not the same LLM).
LLM_FAMILIES: tuple[tuple[str, str], ...] = (
    ("qwen2.5", "qwen2.5"), ("qwen2", "qwen2"), ("qwen1.5", "qwen1.5"), ("qwen", "qwen"),
    ("vicuna", "vicuna"), ("llama-3", "llama3"), ("llama3", "llama3"), ("meta-llama-3", "llama3"),
    ("llama-2", "llama2"), ("llama2", "llama2"), ("tinyllama", "tinyllama"), ("mobilellama", "mobilellama"),
    ("phi-3", "phi3"), ("phi3", "phi3"), ("phi-2", "phi2"), ("phi2", "phi2"), ("phi-1.5", "phi1.5"),
    ("internlm2.5", "internlm2.5"), ("internlm2", "internlm2"), ("mistral", "mistral"), ("hermes-2-yi", "yi"),
    ("nous-hermes-2-yi", "yi"), ("yi", "yi"), ("gemma", "gemma"), ("stablelm", "stablelm"),
    ("smollm2", "smollm2"), ("smollm", "smollm"), ("openelm", "openelm"), ("minicpm", "minicpm"),
    ("deepseek", "deepseek"),
)


def llm_family(name: str) -> str:
    """The LLM family of a model name (``Qwen2-0.5B`` -> ``qwen2``; unknown -> ``other``)."""
    text = str(name).strip().lower()
    for prefix, family in LLM_FAMILIES:
        if text.startswith(prefix):
            return family
    return "other"


def nominal_params_b(name: str) -> Optional[float]:
    """The size a model's name states, in billions (``qwen2-1.5b`` -> 1.5, ``SmolLM2-360M`` -> 0.36)."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*([bm])\b", str(name).lower())
    if match is None:
        return None
    value = float(match.group(1))
    return value if match.group(2) == "b" else value / 1000.0


def _files(paths: Optional[Iterable[Union[str, Path]]]) -> list[Path]:
    if paths is not None:
        return [Path(p) for p in paths]
    return sorted(LITERATURE_DIR.glob("*.csv"))


def _number(value: object) -> Optional[float]:
    number = pd.to_numeric(value, errors="coerce")
    return None if pd.isna(number) else float(number)


def read_literature_file(path: Union[str, Path]) -> pd.DataFrame:
    """One literature CSV, every row checked (schema, units, ranges, a source on every row)."""
    path = Path(path)
    where = f"literature csv {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where} does not exist")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{where} is not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{where} lacks column(s) {missing}; the schema is {list(COLUMNS)} "
                         f"({LITERATURE_DIR / 'README.md'})")

    def bad(i: int, column: str, value: object, allowed: str) -> ValueError:
        return ValueError(f"{where}, row {i + 2}, column {column}: invalid value {value!r}: {allowed}")

    for i, row in df.iterrows():
        i = int(i)
        for column in REQUIRED:
            if not str(row[column]).strip():
                raise bad(i, column, row[column], "a value (the column is required)")
        if not _SOURCE_FORM.match(row["source"]):
            raise bad(i, "source", row["source"], "github:<owner>/<repo>@<commit>:<path> [#table] or a URL [#table]")
        if row["source_id"] != path.stem:
            raise bad(i, "source_id", row["source_id"], f"the file's name, {path.stem!r} (one source per file)")
        if row["encoder_family"] not in ENCODER_FAMILIES:
            raise bad(i, "encoder_family", row["encoder_family"], f"one of {list(ENCODER_FAMILIES)}")
        if row["encoder"] and REGISTRY_FAMILY.get(row["encoder"]) != row["encoder_family"]:
            raise bad(i, "encoder", row["encoder"], f"empty or a registry encoder of family {row['encoder_family']!r} "
                      f"({sorted(k for k, v in REGISTRY_FAMILY.items() if v == row['encoder_family'])})")
        if row["token_strategy"] not in TOKEN_STRATEGIES:
            raise bad(i, "token_strategy", row["token_strategy"], f"one of {list(TOKEN_STRATEGIES)}")
        if row["benchmark"] not in BENCHMARK_GROUPS:
            raise bad(i, "benchmark", row["benchmark"], f"one of {sorted(BENCHMARK_GROUPS)}")
        checks = (("resolution", 16, 8192, "pixels"), ("visual_tokens", 1, 100_000, "tokens"),
                  ("llm_params_b", 0.01, 1000, "billions of parameters"))
        for column, low, high, unit in checks:
            value = _number(row[column])
            if value is None or not math.isfinite(value) or not low <= value <= high:
                raise bad(i, column, row[column], f"a number of {unit} in [{low}, {high}]")
        if row["encoder_params_m"]:
            value = _number(row["encoder_params_m"])
            if value is None or not 1 <= value <= 20_000:
                raise bad(i, "encoder_params_m", row["encoder_params_m"], "empty or millions of parameters in [1, 20000]")
        scale = _number(row["score_max"])
        if scale not in SCORE_MAX:
            raise bad(i, "score_max", row["score_max"], f"one of {list(SCORE_MAX)}")
        score = _number(row["score"])
        # LLaVA-Bench-in-the-Wild is a score relative to a judge's own answers: it may pass 100
        top = 2 * scale if row["benchmark"] == "llava_wild" else scale  # type: ignore[operator]
        if score is None or not 0 <= score <= top:
            raise bad(i, "score", row["score"], f"a number in [0, {top:g}] (score_max={scale:g})")
        if row["benchmark"] == "ocrbench" and scale not in (100.0, 1000.0):
            raise bad(i, "score_max", row["score_max"], "100 (percent) or 1000 (points) for ocrbench")
    out = df.copy()
    for column in ("resolution", "visual_tokens"):
        out[column] = pd.to_numeric(out[column]).astype(int)
    for column in ("llm_params_b", "score", "score_max"):
        out[column] = pd.to_numeric(out[column]).astype(float)
    out["encoder_params_m"] = pd.to_numeric(out["encoder_params_m"].replace("", None), errors="coerce").astype(float)
    out["score_pct"] = 100.0 * out["score"] / out["score_max"]
    out["group"] = out["benchmark"].map(BENCHMARK_GROUPS)
    out["llm_family"] = out["llm"].map(llm_family)
    return out


def load_literature(paths: Optional[Iterable[Union[str, Path]]] = None) -> pd.DataFrame:
    """Every literature file (``results/reference/literature/*.csv`` by default), checked, in one frame.

    Adds ``score_pct`` (the score on a 0-100 scale), ``group`` (the benchmark's group) and
    ``llm_family``. A (model, benchmark, split) published twice in one source is an error.
    """
    files = _files(paths)
    if not files:
        raise ValueError(f"no literature CSVs found in {LITERATURE_DIR}")
    table = pd.concat([read_literature_file(p) for p in files], ignore_index=True)
    key = ["source_id", "model", "llm", "resolution", "visual_tokens", "token_strategy", "train_data", "benchmark",
           "split"]
    dup = table[table.duplicated(key, keep=False)]
    if len(dup):
        first = dup.iloc[0]
        raise ValueError(f"literature source {first['source_id']!r} publishes {first['model']!r} on "
                         f"{first['benchmark']!r} twice ({len(dup)} rows share their key {key}); tell them apart "
                         "in train_data or split, or keep one")
    return table
