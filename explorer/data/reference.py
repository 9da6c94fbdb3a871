"""Accuracy from outside the explorer: published tables and users' CSVs, joined onto results.

Published numbers describe the released configurations only, so they join on rows whose
encoder architecture is the one a reference row names (its ``knobs`` column, JSON; ``{}`` = the
family's defaults). A published number never joins an extrapolated configuration
(:data:`EXTRAPOLATED`): ``convnext_xxl``'s default fifth stage is our extrapolation, so the
paper's ConvNeXt-XXL point names the published four-stage tower (``{"extra_stage": false}``).
A user's CSV may carry a ``knobs`` column to describe other configurations. Every joined value keeps its provenance in
``accuracy_source`` (``published:<source>`` or ``user:<source>``).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np
import pandas as pd

from explorer.data.space import canonical_json

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "results" / "reference"
REQUIRED = ("encoder", "resolution", "llm", "value")
DEFAULT_METRIC = "avg5"


def _canonical_knobs(value: object) -> str:
    """Knobs in the store's one spelling (:func:`explorer.data.space.canonical_json`: sorted keys,
    ``2.0`` written ``2``), so a CSV's ``{"width": 2.0}`` joins the store's ``{"width": 2}``."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return "{}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"invalid knobs={value!r}: not JSON ({err.msg}); a JSON object such as "
                             '{"width_mult": 0.5}') from None
    if not isinstance(value, dict):
        raise ValueError(f"invalid knobs={value!r}: a JSON object such as {{\"width_mult\": 0.5}}")
    return canonical_json(value)


#: encoder -> (predicate on its resolved knobs, why that configuration is not a published model).
EXTRAPOLATED: dict[str, tuple[str, Any, str]] = {
    "convnext_xxl": ("extra_stage", True, "fifth stage (6 x 6144) extrapolated from ConvLLaVA's rule; "
                     "no five-stage ConvNeXt-XXL was published"),
}


@functools.lru_cache(maxsize=256)
def extrapolation(encoder: str, knobs_json: str = "{}") -> Optional[str]:
    """Why ``encoder`` with these knobs is an extrapolation, not a published model (None if it is not)."""
    rule = EXTRAPOLATED.get(encoder)
    if rule is None:
        return None
    knob, value, why = rule
    try:
        import torch

        from explorer.models import build_encoder

        with torch.device("meta"):
            resolved = build_encoder(encoder, **json.loads(knobs_json)).describe().get("knobs", {})
    except Exception:  # unknown knobs: not provably published
        return why
    return why if resolved.get(knob) == value else None


@functools.lru_cache(maxsize=256)
def _same_architecture(encoder: str, a_json: str, b_json: str) -> bool:
    """True when two knob sets build the same architecture (``{}`` vs spelled-out defaults)."""
    if a_json == b_json:
        return True
    try:
        import torch

        from explorer.models import build_encoder

        with torch.device("meta"):
            a = build_encoder(encoder, **json.loads(a_json)).describe()
            b = build_encoder(encoder, **json.loads(b_json)).describe()
    except Exception:
        return False
    a.pop("knobs", None)
    b.pop("knobs", None)
    return a == b


@functools.lru_cache(maxsize=256)
def _same_as_default(encoder: str, knobs_json: str) -> bool:
    """True when spelled-out knobs resolve to the family's default architecture
    (``width_mult: 1.0`` is the released FastViTHD, so published numbers apply to it)."""
    if knobs_json == "{}":
        return True
    try:
        import torch

        from explorer.models import build_encoder

        with torch.device("meta"):
            given = build_encoder(encoder, **json.loads(knobs_json)).describe()
            default = build_encoder(encoder).describe()
    except Exception:  # unknown family or knobs: not provably the default
        return False
    given.pop("knobs", None)
    default.pop("knobs", None)
    return given == default


def read_accuracy_csv(path: Union[str, Path], origin: str = "user", metric: Optional[str] = None) -> pd.DataFrame:
    """Read one accuracy CSV (long format) and check every row before anything joins it.

    Errors name the file, the row (as a spreadsheet numbers it: the header is row 1) and the
    column. With ``metric``, rows of another metric are refused (they would never join).
    """
    path = Path(path)
    where = f"accuracy csv {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where} does not exist")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{where} is not a readable CSV ({str(err).splitlines()[0]})") from None
    if "value" not in df.columns and "accuracy" in df.columns:
        df = df.rename(columns={"accuracy": "value"})
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{where} lacks column(s) {missing}; needed: {list(REQUIRED)}"
                         " (plus optional metric, knobs, source)")
    df = df.copy()
    if "metric" not in df.columns:
        df["metric"] = DEFAULT_METRIC
    if "source" not in df.columns:
        df["source"] = path.stem
    df["origin"] = origin

    def bad(i: int, column: str, value: object, allowed: str) -> ValueError:
        return ValueError(f"{where}, row {i + 2}, column {column}: invalid value {value!r}: {allowed}")

    for i, row in df.iterrows():
        for column in ("encoder", "llm"):
            if not isinstance(row[column], str) or not row[column].strip():
                raise bad(int(i), column, row[column], "a non-empty name")
        res = pd.to_numeric(row["resolution"], errors="coerce")
        if pd.isna(res) or float(res) != int(res) or int(res) <= 0:
            raise bad(int(i), "resolution", row["resolution"], "a positive integer number of pixels")
        value = pd.to_numeric(row["value"], errors="coerce")
        if pd.isna(value) or not 0 <= float(value) <= 100:
            raise bad(int(i), "value", row["value"], "a percentage in [0, 100]")
        if "knobs" in df.columns:
            try:
                _canonical_knobs(row["knobs"])
            except ValueError as err:
                raise bad(int(i), "knobs", row["knobs"], str(err).split(": ", 1)[-1]) from None
        if metric is not None and row["metric"] != metric:
            raise bad(int(i), "metric", row["metric"], f"the metric being joined, {metric!r} (accuracy.metric); "
                      f"rows of another metric never join: set accuracy.metric or drop them")
    df["knobs"] = [_canonical_knobs(k) for k in df["knobs"]] if "knobs" in df.columns else "{}"
    df["resolution"] = pd.to_numeric(df["resolution"]).astype(int)
    df["value"] = pd.to_numeric(df["value"]).astype(float)
    if origin == "published":
        for r in df.itertuples():
            why = extrapolation(r.encoder, r.knobs)
            if why is not None:
                raise ValueError(f"published accuracy csv {str(path)!r} puts a published number on {r.encoder} "
                                 f"with knobs {r.knobs}, which is not a published model ({why}); give the "
                                 "published configuration's knobs")
    return df


def _truthy(value: object) -> bool:
    """An ``approximate`` cell: true/1/yes (any case) is True; false, empty or missing is False."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return str(value).strip().lower() in ("true", "1", "yes")


def load_references(paths: Optional[Iterable[Union[str, Path]]] = None) -> pd.DataFrame:
    """All published references (``results/reference/*.csv`` by default), long format."""
    files = sorted(REFERENCE_DIR.glob("*.csv")) if paths is None else [Path(p) for p in paths]
    frames = [read_accuracy_csv(p, origin="published") for p in files]
    if not frames:
        raise ValueError(f"no reference CSVs found in {REFERENCE_DIR}")
    return pd.concat(frames, ignore_index=True)


def available_metrics(refs: Optional[pd.DataFrame] = None) -> list[str]:
    refs = load_references() if refs is None else refs
    return sorted(refs["metric"].unique())


def attach_accuracy(
    results: pd.DataFrame,
    metric: str = DEFAULT_METRIC,
    user_csv: Optional[Union[str, Path]] = None,
    published: bool = True,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Fill ``accuracy`` / ``accuracy_source`` on rows that have none (or all, with ``overwrite``).

    Precedence: a value already in the row (e.g. from a training run) unless ``overwrite``, then the
    user's CSV, then the published tables. ``accuracy_approximate`` says whether the value was read
    off a plot (the CSVs' ``approximate`` column). A point whose visual tokens are pruned inside the
    LLM (a non-null ``pruning``) never takes a value: what was published or trained is its unpruned
    twin's, not its own (``explorer.accuracy.fill_accuracy`` predicts it).
    """
    sources = []
    if user_csv is not None:
        sources.append(read_accuracy_csv(user_csv, origin="user"))
    if published:
        sources.append(load_references())
    if not sources:
        return results.copy()
    table = pd.concat(sources, ignore_index=True)
    if metric not in set(table["metric"]):
        raise ValueError(f"invalid metric={metric!r}: available metrics are {sorted(set(table['metric']))}")
    table = table[table["metric"] == metric].drop_duplicates(["encoder", "knobs", "resolution", "llm"], keep="first")
    approx = table["approximate"].map(_truthy) if "approximate" in table.columns else pd.Series(False, index=table.index)
    lookup = {
        (r.encoder, r.knobs, int(r.resolution), r.llm): (float(r.value), f"{r.origin}:{r.source}", bool(a))
        for r, a in zip(table.itertuples(), approx)
    }
    out = results.copy()
    if "accuracy" not in out.columns:
        out["accuracy"] = np.nan
    if "accuracy_source" not in out.columns:
        out["accuracy_source"] = None
    out["accuracy"] = out["accuracy"].astype(float)
    out["accuracy_source"] = out["accuracy_source"].astype(object)
    if "accuracy_approximate" not in out.columns:
        out["accuracy_approximate"] = False
    pruned = out["pruning"].notna() if "pruning" in out.columns else pd.Series(False, index=out.index)
    for idx, row in out.iterrows():
        if (not overwrite and pd.notna(row["accuracy"])) or pruned.loc[idx]:
            continue
        knobs = _canonical_knobs(row.get("knobs"))
        key = (row["encoder"], knobs, int(row["resolution"]), row["llm"])
        if key not in lookup:  # the same architecture spelled differently ({} vs explicit defaults)
            for ref_key in lookup:
                if ref_key[0] == key[0] and ref_key[2:] == key[2:] and _same_architecture(key[0], ref_key[1], knobs):
                    key = ref_key
                    break
        if key in lookup:
            value, source, approximate = lookup[key]
            if source.startswith("published:") and extrapolation(row["encoder"], knobs) is not None:
                continue  # never a published number on an extrapolated model
            out.at[idx, "accuracy"], out.at[idx, "accuracy_source"] = value, source
            out.at[idx, "accuracy_approximate"] = approximate
    return out
