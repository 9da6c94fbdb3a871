"""Multi-objective search over a space with optuna: measure a few points, not the whole grid.

A sweep measures every design point; a search asks an optuna sampler (TPE, NSGA-II or random)
which point to measure next and tells it the result, so a frontier of TTFT against accuracy
emerges from a fraction of the measurements. Each trial's point is measured by the sweep engine
(:func:`explorer.engine.sweep.plan_sweep` / :func:`explorer.engine.sweep.run_sweep` on that one point), so it
is factorised, cached and stored exactly like a sweep: a configuration measured before, by a
sweep or by an earlier trial, costs nothing.

How the space becomes optuna parameters (:class:`ParamSpace`):

- each knob of each encoder entry, the resolution, the LLM and the text prompt length become one
  parameter; a key with a single value is fixed and not sampled;
- numeric lists that are an arithmetic progression of 3 or more values (``[256, 512, 768]``,
  ``{start: 256, stop: 1024, step: 128}``, ``width_mult: [0.5, 0.75, 1.0]``) become stepped
  ``IntDistribution`` / ``FloatDistribution`` (ordinal: TPE and NSGA-II see that 512 lies
  between 256 and 768); every other list becomes a ``CategoricalDistribution`` (``ordinal=False``
  makes every list categorical). Sampled values always map back to a value the space lists, so
  search points have the same keys as sweep points. The space schema has no continuous ranges:
  a search only ever proposes points of the grid;
- with several encoder entries, ``encoder`` picks the entry (its label) and that entry's knobs
  are conditional parameters named ``<label>.<knob>``; ``resolution`` is shared when every
  entry lists the same resolutions, else it is ``<label>.resolution`` too.

How a trial ends:

- COMPLETE with the objective values (columns of the results table, e.g. ``ttft_ms`` and
  ``accuracy``). Constraints (``max_ttft_ms``, ``max_params_m``) are set with
  :meth:`optuna.trial.Trial.set_constraint` (``value - limit``; > 0 is infeasible), which TPE and
  NSGA-II use for constrained optimisation and ``study.best_trials`` filters on. (optuna 5
  deprecates the samplers' ``constraints_func`` in favour of this. The values are also stored in
  the trial's user attributes ``constraint:<name>``, which optuna 4 reads through a
  ``constraints_func``, and the dashboard shows.)
- FAIL when a measurement of the point failed (exception, timeout, out of memory): the error is
  in the user attribute ``error``.
- PRUNED when the point is not part of the space (an ``exclude:`` entry or a space constraint
  drops it) or an objective has no value for it (e.g. no accuracy is known for that point):
  TPE ranks pruned trials below complete ones, so it learns to stay away; ``skip_reason`` says why.

The study lives in the store's database (same SQLAlchemy URL, optuna's ``RDBStorage``). ``trials``
is the total the study should reach: running the same search again continues the study
(``load_if_exists``) and only adds the missing trials. The default study name is
``<space>-<sampler>-<digest>``, the digest covering the parameter space, objectives, constraints
and measuring environment, so a changed space or another machine starts a new study instead of
mixing incompatible trials. ``optuna-dashboard sqlite:///results/<space>/store.db`` shows it live.

Modules: :mod:`.params` (space -> optuna parameters), :mod:`.objectives` (objectives and
measured-value constraints), :mod:`.study` (samplers, storage, study checks), :mod:`.evaluate`
(one point through the sweep engine), :mod:`.loop` (:func:`prepare_search`, :func:`run_search`),
:mod:`.report` (:class:`SearchSetup`, :class:`SearchReport`).
"""
from explorer.engine.options import SAMPLERS, SearchOptions
from explorer.engine.search.evaluate import Evaluation, PointEvaluator
from explorer.engine.search.loop import prepare_search, run_search
from explorer.engine.search.objectives import (CONSTRAINT_COLUMNS, OBJECTIVE_COLUMNS, SearchConstraints, SearchError,
                                               resolve_objectives)
from explorer.engine.search.params import Dimension, ParamSpace
from explorer.engine.search.report import SearchReport, SearchSetup
from explorer.engine.search.study import count_finished, default_study_name, make_sampler, optuna_storage

__all__ = ["SAMPLERS", "CONSTRAINT_COLUMNS", "OBJECTIVE_COLUMNS", "SearchError", "SearchOptions", "SearchConstraints",
           "Dimension", "ParamSpace", "Evaluation", "PointEvaluator", "SearchReport", "SearchSetup",
           "resolve_objectives", "make_sampler", "default_study_name", "optuna_storage", "prepare_search",
           "count_finished", "run_search"]
