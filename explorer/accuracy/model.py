"""The accuracy model: a predicted benchmark score, with an interval, for any design point.

Form (per benchmark b of group g, a result of source s):

    logit(score / 100) = c_b + u_{s,g} + (alpha_g + a_b) log N + (beta_g + d_b) log T + rho_g log R
                         + gamma_g log E + f_{family,g} + l_{llm family} + k_{token strategy}

N: LLM parameters (billions), T: visual tokens, R: input side of one view (pixels), E: encoder
parameters (millions). Rationale: Li et al. 2024 (arXiv 2411.03312) fit error = A N^-alpha B T^-beta
+ D; for scores well above chance ``logit(score) ~ -log(error)``, so the power law is linear in the
logs, and the logit keeps every prediction inside (0, 100). Slopes are shared by a benchmark
group (OCR-like tasks may scale with tokens differently from reasoning tasks) with small per-benchmark
deviations; ``u`` is the training recipe of a source (data, stages), which differs more between papers
than any architecture choice. Every term but the intercepts is a ridge-penalised (Gaussian prior)
effect, so a family or source with few rows stays near zero.

Uncertainty: a Bayesian bootstrap over sources (Dirichlet weights per source) refits the model; a prediction's draws combine the
bootstrap fits with the residual noise of its group and, where the recipe or the encoder family is
unknown to the data, the spread of those effects. The interval is the draws' central ``level``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from explorer.accuracy.literature import AVERAGES, BENCHMARK_GROUPS
from explorer.checks import OptionError, check_int, check_number

GROUPS: tuple[str, ...] = ("text", "knowledge", "general")
FEATURES: tuple[str, ...] = ("encoder_family", "encoder_params_m", "resolution", "visual_tokens", "llm_params_b",
                             "llm_family", "token_strategy")
_EPS = 0.005  # scores are clipped to [0.5%, 99.5%] before the logit


@dataclass(frozen=True)
class AccuracyFitOptions:
    """How the accuracy model is fitted (``accuracy.*``). Prior scales are in logit units."""

    bootstrap: int = 100  # Bayesian-bootstrap refits over sources
    seed: int = 0
    draws: int = 400  # Monte-Carlo draws per prediction
    prior_source: float = 0.6  # recipe (source x group) effects
    prior_family: float = 0.4  # encoder-family x group effects
    prior_llm: float = 0.4  # LLM-family effects
    prior_strategy: float = 0.3  # token-strategy effects
    prior_slope: float = 1.0  # group slopes
    prior_deviation: float = 0.15  # per-benchmark slope deviations

    def __post_init__(self) -> None:
        check_int("bootstrap", self.bootstrap, low=0, high=5000)
        check_int("seed", self.seed, low=0)
        check_int("draws", self.draws, low=10, high=100_000)
        for name in ("prior_source", "prior_family", "prior_llm", "prior_strategy", "prior_slope", "prior_deviation"):
            check_number(name, getattr(self, name), low=1e-3, high=100.0)


def _logit(pct: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(pct, dtype=float) / 100.0, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _sigmoid_pct(x: np.ndarray) -> np.ndarray:
    return 100.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class _Design:
    """The columns of the design matrix and the prior scale of each (None: not penalised)."""

    names: tuple[str, ...]
    priors: tuple[Optional[float], ...]
    centre: Mapping[str, float]

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


def _numeric_features(rows: pd.DataFrame, centre: Mapping[str, float], params_fill: Mapping[str, float]
                      ) -> dict[str, np.ndarray]:
    enc = rows["encoder_params_m"].astype(float).to_numpy().copy()
    missing = ~np.isfinite(enc)
    if missing.any():
        fills = rows["encoder_family"].map(params_fill).astype(float).to_numpy()
        enc[missing] = np.where(np.isfinite(fills[missing]), fills[missing], params_fill.get("*", 300.0))
    return {
        "logN": np.log(rows["llm_params_b"].astype(float).to_numpy()) - centre["logN"],
        "logT": np.log(rows["visual_tokens"].astype(float).to_numpy()) - centre["logT"],
        "logR": np.log(rows["resolution"].astype(float).to_numpy()) - centre["logR"],
        "logE": np.log(enc) - centre["logE"],
    }


@dataclass
class AccuracyModel:
    """A fitted accuracy model; :meth:`predict` gives scores with intervals for design points."""

    options: AccuracyFitOptions
    design: _Design
    coef: np.ndarray
    boot: np.ndarray  # [B, p] bootstrap refits (B may be 0)
    sigma: dict[str, float]  # residual sd per group (logit)
    tau_source: dict[str, float]  # spread of recipe effects per group (logit)
    tau_source_benchmark: dict[str, float]  # spread of a recipe's effect on one benchmark beyond its group's
    tau_family: dict[str, float]
    params_fill: dict[str, float]
    support: pd.DataFrame  # per encoder family: ranges of the numeric features seen
    benchmarks: tuple[str, ...]
    sources: tuple[str, ...]
    n_rows: int
    counts: pd.DataFrame  # rows per (source_id, encoder_family, benchmark)

    # -- the design matrix -------------------------------------------------------------------
    def matrix(self, rows: pd.DataFrame, benchmarks: Sequence[str], sources: Sequence[Optional[str]]) -> np.ndarray:
        return _matrix(self.design, rows, benchmarks, sources, self.params_fill)

    def slopes(self) -> pd.DataFrame:
        """The group slopes (logit per log unit) with their bootstrap 80% ranges."""
        idx = self.design.index()
        out = []
        for g in GROUPS:
            for term, what in (("logN", "LLM parameters"), ("logT", "visual tokens"), ("logR", "input side"),
                               ("logE", "encoder parameters")):
                j = idx.get(f"{term}:{g}")
                if j is None:
                    continue
                low = high = float("nan")
                if len(self.boot):
                    low, high = np.quantile(self.boot[:, j], [0.1, 0.9])
                out.append({"group": g, "term": term, "of": what, "slope": float(self.coef[j]),
                            "low": float(low), "high": float(high)})
        return pd.DataFrame(out)

    def benchmark_slope(self, benchmark: str, term: str) -> float:
        idx = self.design.index()
        g = BENCHMARK_GROUPS[benchmark]
        value = self.coef[idx[f"{term}:{g}"]]
        dev = idx.get(f"{term}:b:{benchmark}")
        return float(value + (self.coef[dev] if dev is not None else 0.0))

    def choose_recipe(self, families: Sequence[str], metric: str) -> Optional[str]:
        """The one recipe to predict a frame with: the source with the most results on ``metric``'s
        benchmarks among ``families``, else on those benchmarks at all (None: no source has them)."""
        benchmarks = self.metric_benchmarks(metric)
        c = self.counts[self.counts["benchmark"].isin(benchmarks)]
        for part in (c[c["encoder_family"].isin(list(families))], c):
            if len(part):
                totals = part.groupby("source_id")["rows"].sum()
                return str(sorted(totals.index, key=lambda s: (-totals[s], s))[0])
        return None

    # -- prediction --------------------------------------------------------------------------
    def extrapolation(self, rows: pd.DataFrame) -> list[Optional[str]]:
        """Why each design point lies outside the data's support (None when it lies inside)."""
        out: list[Optional[str]] = []
        sup = self.support.set_index("encoder_family")
        overall = self.support.attrs
        for r in rows.itertuples():
            why = []
            fam = r.encoder_family
            if fam not in sup.index:
                why.append(f"no published result uses a {fam} encoder")
            else:
                s = sup.loc[fam]
                enc = float(r.encoder_params_m) if pd.notna(r.encoder_params_m) else float("nan")
                if math.isfinite(enc) and math.isfinite(s.enc_min) and not s.enc_min * 0.9 <= enc <= s.enc_max * 1.1:
                    why.append(f"{fam} encoders were published at {s.enc_min:g}-{s.enc_max:g} M parameters, "
                               f"not {enc:.4g}")
                if not s.tok_min * 0.8 <= r.visual_tokens <= s.tok_max * 1.25:
                    why.append(f"{fam} encoders were published at {s.tok_min:g}-{s.tok_max:g} visual tokens, "
                               f"not {r.visual_tokens:g}")
            if not overall["llm_min"] * 0.8 <= r.llm_params_b <= overall["llm_max"] * 1.25:
                why.append(f"LLMs were published at {overall['llm_min']:g}-{overall['llm_max']:g} B, "
                           f"not {r.llm_params_b:g}")
            out.append("; ".join(why) or None)
        return out

    def family_distance(self, rows: pd.DataFrame) -> np.ndarray:
        """How far each point's encoder is from what its family published, in [0, 1]: 1 for a family
        with no results; for a known family, the log distance of its size outside the published
        sizes, a factor of 2 counting fully (such an encoder may differ as much as another family)."""
        sup = self.support.set_index("encoder_family")
        out = np.ones(len(rows))
        for i, r in enumerate(rows.itertuples()):
            if r.encoder_family not in sup.index:
                continue
            s = sup.loc[r.encoder_family]
            enc = float(r.encoder_params_m) if pd.notna(r.encoder_params_m) else float("nan")
            if not (math.isfinite(enc) and math.isfinite(s.enc_min) and math.isfinite(s.enc_max)):
                out[i] = 0.0  # the family is known, its sizes are not: nothing to measure a distance on
                continue
            below = max(math.log(s.enc_min / enc), 0.0)
            above = max(math.log(enc / s.enc_max), 0.0)
            out[i] = min((below + above) / math.log(2.0), 1.0)
        return out

    def predict(self, rows: pd.DataFrame, metric: str, recipe: Optional[str] = None, level: float = 0.8
                ) -> pd.DataFrame:
        """Predicted ``metric`` (a benchmark, or an average in AVERAGES) for each row of ``rows``.

        ``rows`` needs the columns of :data:`FEATURES`. ``recipe``: a source id (predict as that
        source trained, its recipe effect known) or None (an unknown recipe: its spread is in
        the interval). Returns ``accuracy``, ``accuracy_low``, ``accuracy_high`` (the central
        ``level`` interval, percent), ``extrapolated`` (bool) and ``why``.
        """
        check_number("level", level, low=0.01, high=0.999)
        benchmarks = self.metric_benchmarks(metric)
        if recipe is not None and recipe not in self.sources:
            raise OptionError("recipe", recipe, f"a literature source id {list(self.sources)} or none")
        missing = [c for c in FEATURES if c not in rows.columns]
        if missing:
            raise ValueError(f"invalid rows: missing column(s) {missing}; needed {list(FEATURES)}")
        n = len(rows)
        rng = np.random.default_rng(self.options.seed)
        draws = self.options.draws
        total = np.zeros((draws, n))
        point = np.zeros(n)
        distance = self.family_distance(rows)
        # one recipe and one family draw per (draw, row), shared by the benchmarks of an average
        z_source = rng.standard_normal((draws, n))
        z_family = rng.standard_normal((draws, n))
        b_pick = rng.integers(0, len(self.boot), size=draws) if len(self.boot) else None
        for bench in benchmarks:
            g = BENCHMARK_GROUPS[bench]
            x = self.matrix(rows, [bench] * n, [recipe] * n)
            mean = x @ self.coef
            point += _sigmoid_pct(mean) / len(benchmarks)
            fit_draws = (self.boot[b_pick] @ x.T) if b_pick is not None else np.tile(mean, (draws, 1))
            noise = self.sigma[g] * rng.standard_normal((draws, n))
            if recipe is None:
                noise = noise + self.tau_source[g] * z_source
            if recipe is None or f"srcb:{recipe}:{bench}" not in self.design.index():
                # the recipe's effect on this benchmark is unknown: its spread joins the interval
                noise = noise + self.tau_source_benchmark[g] * rng.standard_normal((draws, n))
            noise = noise + distance * self.tau_family[g] * z_family
            total += _sigmoid_pct(fit_draws + noise) / len(benchmarks)
        tail = (1 - level) / 2
        low, high = np.quantile(total, [tail, 1 - tail], axis=0)
        why = self.extrapolation(rows)
        return pd.DataFrame({"accuracy": point, "accuracy_low": np.minimum(low, point),
                             "accuracy_high": np.maximum(high, point),
                             "extrapolated": [w is not None for w in why], "why": why}, index=rows.index)

    def metric_benchmarks(self, metric: str) -> tuple[str, ...]:
        """The benchmarks a metric averages (a benchmark is its own one-element average)."""
        if metric in AVERAGES:
            benchmarks = AVERAGES[metric]
        elif metric in BENCHMARK_GROUPS:
            benchmarks = (metric,)
        else:
            raise OptionError("metric", metric, f"a benchmark {sorted(BENCHMARK_GROUPS)} or an average "
                              f"{sorted(AVERAGES)}")
        absent = [b for b in benchmarks if b not in self.benchmarks]
        if absent:
            raise OptionError("metric", metric, f"benchmarks with published results; {absent} have none in the "
                              f"table the model was fitted on")
        return benchmarks


def _design(table: pd.DataFrame, options: AccuracyFitOptions) -> _Design:
    names: list[str] = []
    priors: list[Optional[float]] = []

    def add(name: str, prior: Optional[float]) -> None:
        names.append(name)
        priors.append(prior)

    for b in sorted(table["benchmark"].unique()):
        add(f"bench:{b}", None)
    groups = sorted(table["group"].unique())
    for g in groups:
        for term in ("logN", "logT", "logR", "logE"):
            add(f"{term}:{g}", options.prior_slope)
    for b in sorted(table["benchmark"].unique()):
        add(f"logN:b:{b}", options.prior_deviation)
        add(f"logT:b:{b}", options.prior_deviation)
    for s in sorted(table["source_id"].unique()):
        for g in groups:
            add(f"src:{s}:{g}", options.prior_source)
    for s, b in sorted(set(zip(table["source_id"], table["benchmark"]))):
        add(f"srcb:{s}:{b}", options.prior_source / 2)
    for f in sorted(table["encoder_family"].unique()):
        for g in groups:
            add(f"fam:{f}:{g}", options.prior_family)
    for lf in sorted(table["llm_family"].unique()):
        add(f"llm:{lf}", options.prior_llm)
    for t in sorted(table["token_strategy"].unique()):
        add(f"strat:{t}", options.prior_strategy)
    enc = table["encoder_params_m"].astype(float)
    centre = {"logN": float(np.log(table["llm_params_b"]).mean()),
              "logT": float(np.log(table["visual_tokens"]).mean()),
              "logR": float(np.log(table["resolution"]).mean()),
              "logE": float(np.log(enc[np.isfinite(enc)]).mean()) if np.isfinite(enc).any() else math.log(300.0)}
    return _Design(tuple(names), tuple(priors), centre)


def _matrix(design: _Design, rows: pd.DataFrame, benchmarks: Sequence[str], sources: Sequence[Optional[str]],
            params_fill: Mapping[str, float]) -> np.ndarray:
    idx = design.index()
    n = len(rows)
    x = np.zeros((n, len(design.names)))
    num = _numeric_features(rows, design.centre, params_fill)
    fam = rows["encoder_family"].to_numpy()
    lfam = rows["llm_family"].to_numpy()
    strat = rows["token_strategy"].to_numpy()
    for i in range(n):
        b = benchmarks[i]
        g = BENCHMARK_GROUPS[b]

        def put(name: str, value: float) -> None:
            j = idx.get(name)
            if j is not None:
                x[i, j] += value

        put(f"bench:{b}", 1.0)
        for term in ("logN", "logT", "logR", "logE"):
            put(f"{term}:{g}", num[term][i])
        put(f"logN:b:{b}", num["logN"][i])
        put(f"logT:b:{b}", num["logT"][i])
        if sources[i] is not None:
            put(f"src:{sources[i]}:{g}", 1.0)
            put(f"srcb:{sources[i]}:{b}", 1.0)
        put(f"fam:{fam[i]}:{g}", 1.0)
        put(f"llm:{lfam[i]}", 1.0)
        put(f"strat:{strat[i]}", 1.0)
    return x


def _solve(x: np.ndarray, y: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """The ridge solution of ||y - x w||^2 + sum(penalty * w^2) (normal equations; every column is
    penalised, so the system is positive definite; least squares only if it is numerically not)."""
    a = x.T @ x + np.diag(penalty)
    try:
        return np.linalg.solve(a, x.T @ y)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, x.T @ y, rcond=None)[0]


def _recipe_key(name: str) -> Optional[tuple[str, str]]:
    """(prefix, group) of a recipe column (``src:<s>:<group>``, ``srcb:<s>:<benchmark>``), else None."""
    prefix, _, rest = name.partition(":")
    if prefix == "src":
        return "src", rest.rsplit(":", 1)[1]
    if prefix == "srcb":
        return "srcb", BENCHMARK_GROUPS[rest.rsplit(":", 1)[1]]
    return None


def _penalty(design: _Design, sigma2: float, recipe_prior: Optional[Mapping[tuple[str, str], float]] = None
             ) -> np.ndarray:
    """lambda = sigma^2 / tau^2 (a Gaussian prior of sd tau); unpenalised intercepts get a tiny ridge.
    ``recipe_prior`` ((prefix, group) -> tau) replaces the recipe columns' prior scale where given."""
    out = []
    for name, prior in zip(design.names, design.priors):
        key = _recipe_key(name)
        if recipe_prior is not None and key is not None:
            prior = recipe_prior[key]
        out.append(1e-6 if prior is None else sigma2 / prior ** 2)
    return np.array(out)


def fit_accuracy(table: pd.DataFrame, options: AccuracyFitOptions = AccuracyFitOptions()) -> AccuracyModel:
    """Fit the model to a literature table (:func:`explorer.accuracy.literature.load_literature`)."""
    if len(table) < 10:
        raise ValueError(f"invalid table: {len(table)} rows; the accuracy model needs at least 10 published results")
    table = table.reset_index(drop=True)
    design = _design(table, options)
    enc = table["encoder_params_m"].astype(float)
    params_fill = {f: float(np.nanmedian(v)) for f, v in enc.groupby(table["encoder_family"]) if v.notna().any()}
    params_fill["*"] = float(np.nanmedian(enc)) if enc.notna().any() else 300.0
    x = _matrix(design, table, table["benchmark"].tolist(), table["source_id"].tolist(), params_fill)
    y = _logit(table["score_pct"].to_numpy())
    groups = table["group"].to_numpy()
    sigma2 = 0.25
    recipe_prior = {(p, g): options.prior_source / (1 if p == "src" else 2) for p in ("src", "srcb") for g in GROUPS}
    recipe_cols: dict[tuple[str, str], list[int]] = {k: [] for k in recipe_prior}
    for name, j in design.index().items():
        key = _recipe_key(name)
        if key is not None:
            recipe_cols[key].append(j)
    for _ in range(8):  # residual variance, then the recipes' spread (empirical Bayes), to a fixed point
        pen = _penalty(design, sigma2, recipe_prior)
        coef = _solve(x, y, pen)
        resid = y - x @ coef
        dof = max(len(y) - np.trace(np.linalg.solve(x.T @ x + np.diag(pen), x.T @ x)), 1.0)
        sigma2 = float(resid @ resid / dof)
        for key, cols in recipe_cols.items():
            counts = x[:, cols].sum(axis=0)
            used = counts > 0
            if used.sum() < 2:
                continue
            tau2 = recipe_prior[key] ** 2
            # a fitted effect is the raw one shrunk by tau^2 / (tau^2 + sigma^2 / n): undo it, then
            # take the moment estimate tau^2 = mean(raw^2 - sigma^2 / n)
            shrink = tau2 / (tau2 + sigma2 / counts[used])
            raw = coef[np.array(cols)[used]] / shrink
            recipe_prior[key] = float(np.sqrt(max(np.mean(raw ** 2 - sigma2 / counts[used]), 0.05 ** 2)))
    pen = _penalty(design, sigma2, recipe_prior)
    sigma = {}
    for g in GROUPS:
        r = resid[groups == g]
        sigma[g] = float(np.sqrt(np.mean(r ** 2) * len(y) / dof)) if len(r) >= 3 else math.sqrt(sigma2)
    idx = design.index()

    def spread(prefix: str, g: str, prior: float) -> float:
        vals = [coef[j] for n, j in idx.items() if n.startswith(prefix) and n.endswith(f":{g}")]
        # fitted effects are shrunk towards 0: never claim less spread than half the prior
        return float(max(np.sqrt(np.mean(np.square(vals))) if vals else prior, prior / 2))

    tau_source = {g: recipe_prior[("src", g)] for g in GROUPS}
    tau_source_benchmark = {g: recipe_prior[("srcb", g)] for g in GROUPS}
    tau_family = {g: spread("fam:", g, options.prior_family) for g in GROUPS}
    rng = np.random.default_rng(options.seed)
    sources = np.array(sorted(table["source_id"].unique()))
    source_of = pd.Categorical(table["source_id"], categories=sources).codes
    # per-source blocks of the normal equations, so each refit is a weighted sum of them
    grams = [x[source_of == k].T @ x[source_of == k] for k in range(len(sources))]
    moments = [x[source_of == k].T @ y[source_of == k] for k in range(len(sources))]
    boot = []
    for _ in range(options.bootstrap):
        # Bayesian bootstrap over sources (Rubin 1981): every source stays in, with a Dirichlet
        # weight, so a benchmark or recipe published by one source is never left undetermined
        weight = rng.dirichlet(np.ones(len(sources))) * len(sources)
        a = sum(w * g for w, g in zip(weight, grams)) + np.diag(pen)
        rhs = sum(w * m for w, m in zip(weight, moments))
        try:
            boot.append(np.linalg.solve(a, rhs))
        except np.linalg.LinAlgError:
            boot.append(np.linalg.lstsq(a, rhs, rcond=None)[0])
    support = (table.assign(enc=enc).groupby("encoder_family")
               .agg(enc_min=("enc", "min"), enc_max=("enc", "max"), tok_min=("visual_tokens", "min"),
                    tok_max=("visual_tokens", "max"))
               .reset_index())
    support["enc_min"] = support["enc_min"].fillna(support["encoder_family"].map(params_fill))
    support["enc_max"] = support["enc_max"].fillna(support["encoder_family"].map(params_fill))
    support.attrs["llm_min"] = float(table["llm_params_b"].min())
    support.attrs["llm_max"] = float(table["llm_params_b"].max())
    return AccuracyModel(
        options=options, design=design, coef=coef, boot=np.array(boot).reshape(len(boot), len(coef)), sigma=sigma,
        tau_source=tau_source, tau_source_benchmark=tau_source_benchmark, tau_family=tau_family, params_fill=params_fill, support=support,
        benchmarks=tuple(sorted(table["benchmark"].unique())), sources=tuple(sources), n_rows=len(table),
        counts=table.groupby(["source_id", "encoder_family", "benchmark"]).size().rename("rows").reset_index(),
    )


def design_rows(points: pd.DataFrame) -> pd.DataFrame:
    """The model's features for rows of the results table (registry encoders, catalog LLMs)."""
    from explorer.accuracy.literature import REGISTRY_FAMILY, llm_family, nominal_params_b

    def column(name: str) -> pd.Series:
        if name not in points.columns:
            return pd.Series(np.nan, index=points.index, dtype=float)
        return pd.to_numeric(points[name], errors="coerce").astype(float)

    out = pd.DataFrame(index=points.index)
    out["encoder_family"] = points["encoder"].map(lambda e: REGISTRY_FAMILY.get(str(e), "other"))
    out["encoder_params_m"] = column("encoder_params_m")
    out["resolution"] = column("resolution")
    out["visual_tokens"] = column("visual_tokens")
    sizes = []
    for name, params_m in zip(points["llm"], column("llm_params_m")):
        nominal = nominal_params_b(str(name))
        sizes.append(nominal if nominal is not None else (params_m / 1000.0 if pd.notna(params_m) else float("nan")))
    out["llm_params_b"] = sizes
    out["llm_family"] = points["llm"].map(llm_family)
    out["token_strategy"] = points["token_strategy"] if "token_strategy" in points.columns else "resize"
    return out

