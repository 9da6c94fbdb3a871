"""The search engine: validate, open the study, run the ask/tell loop, report."""
from __future__ import annotations

import dataclasses
import math
import os
import socket
import sys
import time
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import optuna
from optuna.trial import Trial, TrialState

from explorer.analysis import pareto
from explorer.data.space import DesignPoint, Space, digest, enumerate_points
from explorer.engine.sweep.plan import MAX_SWEEP_POINTS, default_settings, resolve_space
from explorer.data.store import Store
from explorer.engine.backend import MeasureBackend
from explorer.engine.options import SearchOptions, SweepOptions
from explorer.engine.search.evaluate import PointEvaluator, check_search_sweep_options
from explorer.engine.search.objectives import SearchConstraints, SearchError, finite, has_accuracy, resolve_objectives
from explorer.engine.search.params import ParamSpace
from explorer.engine.sweep.machine import machine_policy
from explorer.engine.search.report import SearchReport, SearchSetup
from explorer.engine.search.study import (SET_CONSTRAINT, check_study, counts_toward_total, default_study_name,
                                          fail_abandoned, make_sampler, optuna_storage, study_summary)

__all__ = ["prepare_search", "run_search"]


def prepare_search(space: Union[Space, str, Any], settings: Any = None, store: Optional[Store] = None,
                   options: SearchOptions = SearchOptions(), backend: MeasureBackend = MeasureBackend()) -> SearchSetup:
    """Validate every input and map the space to optuna parameters; measures and writes nothing.

    ``options`` were validated when made; the space (:class:`~explorer.data.space.SpaceError`),
    the settings and the objectives' columns (:class:`SearchError`) are checked here.
    """
    space = resolve_space(space, backend)
    if settings is None:
        settings = default_settings(space)
    elif hasattr(settings, "validate"):
        settings.check_on_machine()
    backend = backend.with_fixed_environment(settings).without_estimates()
    env_key = str(backend.environment(settings).key)
    params = ParamSpace.from_space(space, ordinal=options.ordinal)
    cons = SearchConstraints.from_options(options)
    size = space.product_size()
    valid: Optional[frozenset[DesignPoint]] = None
    if size <= MAX_SWEEP_POINTS:
        valid = frozenset(enumerate_points(space, shape_fn=backend.encoder_shape))
    has_acc = options.accuracy == "predicted" or (has_accuracy(store, space, valid or ()) if store is not None
                                                  else False)
    used, notes = resolve_objectives(options.objectives, has_acc)
    definition = {"space": space.name, "parameters": params.fingerprint(), "exclude": space.exclusions(),
                  "space_constraints": {k: v for k, v in dataclasses.asdict(space.constraints).items()
                                        if v is not None},
                  "objectives": [str(o) for o in used], "constraints": cons.to_dict(), "env_key": env_key}
    definition_digest = digest(definition)
    name = options.study or default_study_name(space, options.sampler, definition_digest)
    return SearchSetup(space=space, settings=settings, environment=backend.environment(settings), env_key=env_key,
                       params=params, valid_points=valid, grid_size=len(valid) if valid is not None else size,
                       backend=backend, objectives=used, constraints=cons, definition=definition,
                       definition_digest=definition_digest, study_name=name, sampler=options.sampler, notes=notes)


def _open_study(storage: Any, setup: SearchSetup, options: SearchOptions, notes: list[str]) -> tuple[optuna.Study, int]:
    """Create or continue the study; returns it with the sampler of this run and its finished-trial count."""
    used, name = setup.objectives, setup.study_name
    probe = optuna.create_study(storage=storage, study_name=name, directions=[o.direction for o in used],
                                load_if_exists=True)
    if [d.name.lower() for d in probe.directions] != [o.direction for o in used]:
        raise SearchError(f"invalid search.study={name!r}: that study optimises {len(probe.directions)} "
                          f"objective(s) in other directions than {', '.join(map(str, used))}; "
                          f"give another search.study")
    check_study(probe, setup.definition, setup.definition_digest)
    abandoned = fail_abandoned(probe)
    if abandoned:
        notes.append(f"{abandoned} trial(s) left running by a killed search were marked FAIL")
    before = sum(counts_toward_total(t) for t in probe.get_trials(deepcopy=False))
    pop = int(options.population_size or probe.user_attrs.get("explorer:population_size") or 50)
    if options.sampler == "nsga2" and probe.user_attrs.get("explorer:population_size") != pop:
        probe.set_user_attr("explorer:population_size", pop)
    run_seed = None if options.seed is None else options.seed + before
    study = optuna.load_study(study_name=name, storage=storage,
                              sampler=make_sampler(options.sampler, run_seed, population_size=pop,
                                                   conditional=len(setup.params.entries) > 1,
                                                   constraints=tuple(setup.constraints.active())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.column for o in used])  # axis names in optuna-dashboard
    return study, before


def run_search(space: Union[Space, str, Any], settings: Any = None, store: Union[Store, str, None] = None,
               options: SearchOptions = SearchOptions(), sweep: SweepOptions = SweepOptions(),
               backend: MeasureBackend = MeasureBackend()) -> SearchReport:
    """Run (or continue) an optuna search over ``space`` until the study has ``options.trials`` trials.

    ``space``/``settings``/``store``/``backend`` as in :func:`explorer.engine.sweep.run_sweep`;
    ``options``: :class:`~explorer.engine.options.SearchOptions` (sampler, seed, objectives,
    constraints, study name); ``sweep``: the sweep engine's options for each point (isolation,
    timeout, retry_failed; ``sweep.progress`` shows a bar over trials). A resumed run uses
    ``seed`` + the number of trials already finished, so it does not replay the first run's
    proposals. The machine is checked once, before the first trial, as a sweep checks it
    (:func:`explorer.engine.sweep.machine.machine_policy`). Raises :class:`SearchError` or :class:`~explorer.data.space.SpaceError` before any
    work on bad input.
    """
    t0 = time.monotonic()
    check_search_sweep_options(sweep)
    space = resolve_space(space, backend)
    owned = not isinstance(store, Store)
    if settings is None:
        settings = default_settings(space)
    elif hasattr(settings, "validate"):
        settings.check_on_machine()
    # the look at the machine, once for the whole search (threads from the free cores, warning)
    settings = machine_policy(settings, sweep, backend).settings
    # validate before creating a database file for a search that cannot run
    setup = prepare_search(space, settings, None if owned else store, options, backend)
    st: Store = store if isinstance(store, Store) else Store(store or f"results/{space.name}")
    if owned:
        setup = prepare_search(space, setup.settings, st, options, backend)
    notes = list(setup.notes)
    storage = optuna_storage(st.url)
    if isinstance(storage, optuna.storages.InMemoryStorage):
        notes.append("the store is an in-memory database: the study is not kept after this run")
    previous_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study, before = _open_study(storage, setup, options, notes)
        evaluator = PointEvaluator(setup.space, setup.settings, st, setup.env_key, sweep, setup.backend,
                                   predict_accuracy=options.accuracy == "predicted")
        loop = _AskTellLoop(study, setup, evaluator, sweep.progress, f"search {space.name} ({options.sampler})")
        loop.go(max(0, options.trials - before))
        states, infeasible, keys, feasible = study_summary(study)
    finally:
        optuna.logging.set_verbosity(previous_verbosity)
        if isinstance(storage, optuna.storages.RDBStorage):
            storage.engine.dispose()
        if owned:
            st.close()
    return SearchReport(space=space.name, store_url=st.url, study_name=setup.study_name, sampler=options.sampler,
                        seed=options.seed, objectives=setup.objectives, constraints=setup.constraints,
                        env_key=setup.env_key, trials_target=options.trials, trials_before=before,
                        trials_run=loop.finished, states=states, infeasible=infeasible, point_keys=tuple(keys),
                        feasible_keys=tuple(feasible), grid_size=setup.grid_size, measured=dict(evaluator.measured),
                        cached_trials=loop.cached, interrupted=loop.interrupted, elapsed_s=time.monotonic() - t0,
                        notes=notes)


class _AskTellLoop:
    """The ask/tell loop of one run (kept apart so run_search reads as setup, loop, report)."""

    def __init__(self, study: optuna.Study, setup: SearchSetup, evaluator: PointEvaluator, progress: bool, desc: str):
        self.study, self.setup, self.params, self.evaluator = study, setup, setup.params, evaluator
        self.objectives, self.constraints = tuple(setup.objectives), setup.constraints
        self.progress = progress
        self.desc = desc
        self.finished = 0
        self.cached = 0
        self.points: set[str] = set()
        self.interrupted = False
        self.worker = {"host": socket.gethostname(), "pid": os.getpid()}

    def go(self, todo: int) -> None:
        bar = None
        if self.progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=todo, desc=self.desc, unit="trial", file=sys.stderr, dynamic_ncols=True,
                       mininterval=0.5)
        try:
            for _ in range(todo):
                trial = self.study.ask()
                try:
                    done = self._one(trial, bar)
                except KeyboardInterrupt:
                    self._interrupt(trial)
                    break
                except BaseException:
                    self._interrupt(trial, "the search stopped with an error")
                    raise
                if not done:
                    break
                self.finished += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"points {len(self.points)}, measured "
                                        f"{sum(self.evaluator.measured.values())}, cached {self.cached}", refresh=False)
        finally:
            if bar is not None:
                bar.close()

    def _interrupt(self, trial: Trial, why: str = "interrupted by the user") -> None:
        self.interrupted = True
        try:
            trial.set_user_attr("interrupted", why)
        except Exception:  # the trial was told already (interrupted inside tell)
            pass
        self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    def _note(self, bar: Any, text: str) -> None:
        if bar is not None:
            bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def _one(self, trial: Trial, bar: Any) -> bool:
        """Run one trial; False when the user interrupted the measurement (trial told FAIL)."""
        trial.set_user_attr("worker", self.worker)
        point = self.params.suggest(trial)
        trial.set_user_attr("point_key", point.key)
        trial.set_user_attr("point", point.to_dict())
        trial.set_user_attr("label", point.label())
        if not self.setup.admits(point):
            trial.set_user_attr("skip_reason", "not in the space (dropped by its exclude: or constraints:)")
            self.study.tell(trial, state=TrialState.PRUNED)
            return True
        ev = self.evaluator.evaluate(point)
        if ev.status == "interrupted":
            self._interrupt(trial)
            return False
        self.cached += int(ev.cached)
        self.points.add(point.key)
        trial.set_user_attr("status", ev.status)
        if ev.cached:
            trial.set_user_attr("cached", True)
        if ev.status != "ok":
            first = (ev.error or ev.status).splitlines()[0]
            trial.set_user_attr("error", first[:2000])
            if not ev.cached:
                self._note(bar, f"trial {trial.number}: {ev.status}: {point.label()}: {first}")
            self.study.tell(trial, state=TrialState.FAIL)
            return True
        metrics = {c: v for c in dict.fromkeys(("ttft_ms", "encoder_latency_ms", "projector_latency_ms",
                                                "prefill_latency_ms", "visual_tokens", "encoder_params_m", "accuracy",
                                                *(o.column for o in self.objectives)))
                   if (v := finite(ev.row.get(c))) is not None}
        trial.set_user_attr("metrics", metrics)  # one attribute: each one is a database write
        values = [finite(ev.row.get(o.column)) for o in self.objectives]
        missing = [o.column for o, v in zip(self.objectives, values) if v is None]
        if missing:
            trial.set_user_attr("skip_reason", f"no value for {', '.join(missing)} at this point")
            self.study.tell(trial, state=TrialState.PRUNED)
            return True
        for cname, excess in self.constraints.violations(ev.row).items():
            excess = excess if math.isfinite(excess) else 1e30
            trial.set_user_attr(f"constraint:{cname}", excess)
            if SET_CONSTRAINT:
                trial.set_constraint(cname, excess)
        self.study.tell(trial, values)
        return True
