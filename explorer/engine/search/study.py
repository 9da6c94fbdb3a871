"""optuna's side of a search: samplers, storage on the store's URL, study checks and summaries."""
from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, Trial, TrialState

from explorer.checks import OptionError, is_int
from explorer.data.space import Space, canonical_json
from explorer.engine.options import SAMPLERS
from explorer.engine.search.objectives import SearchError

__all__ = ["SET_CONSTRAINT", "make_sampler", "optuna_storage", "default_study_name", "counts_toward_total",
           "fail_abandoned", "study_summary", "check_study", "count_finished"]

#: Trial statuses of a measurement that failed (they count toward ``trials``); ``killed`` does not:
#: the point is measured again, as a sweep's resume does.
FAILED_STATUSES = ("failed", "timeout", "oom")
#: optuna >= 5 takes constraints per trial (``Trial.set_constraint``); optuna 4 only through a
#: sampler's ``constraints_func``, which then reads the ``constraint:<name>`` user attributes.
SET_CONSTRAINT = hasattr(Trial, "set_constraint")
_DIGEST_ATTR = "explorer:definition_digest"


@dataclass(frozen=True)
class _ConstraintValues:
    """optuna 4's ``constraints_func``: the values the loop stored as user attributes (one per
    constraint, always the same length; a trial without them counts as feasible)."""

    names: tuple[str, ...]

    def __call__(self, trial: FrozenTrial) -> list[float]:
        return [float(trial.user_attrs.get(f"constraint:{n}", 0.0)) for n in self.names]


def make_sampler(name: str, seed: Optional[int], *, population_size: Optional[int] = None,
                 conditional: bool = False, constraints: Sequence[str] = ()) -> optuna.samplers.BaseSampler:
    """The optuna sampler for ``tpe`` | ``nsga2`` | ``random``.

    TPE is multivariate (knobs interact: width and resolution both drive latency), with ``group``
    for conditional parameters of several encoder families. NSGA-II's ``population_size`` defaults
    to 50 (optuna's default) unless given.
    """
    if name not in SAMPLERS:
        raise OptionError("search.sampler", name, f"one of {', '.join(SAMPLERS)}")
    extra: dict[str, Any] = {}
    if constraints and not SET_CONSTRAINT:
        extra["constraints_func"] = _ConstraintValues(tuple(constraints))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=conditional, **extra)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size or 50, **extra)
        return optuna.samplers.RandomSampler(seed=seed)


def optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """optuna's RDBStorage on the store's URL (an in-memory SQLite store gets in-memory trials)."""
    if url.startswith("sqlite://") and (url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url):
        return optuna.storages.InMemoryStorage()
    if not url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url)
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})

    # The store put the file in WAL mode; with synchronous=NORMAL (what the store uses too) a
    # commit no longer waits for fsync, which makes optuna's many small writes ~10x cheaper.
    @sqlalchemy.event.listens_for(storage.engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    storage.engine.dispose()  # connections made before the hook get replaced
    return storage


def default_study_name(space: Space, sampler: str, definition_digest: str) -> str:
    return f"{space.name}-{sampler}-{definition_digest[:8]}"


def counts_toward_total(t: FrozenTrial) -> bool:
    """COMPLETE and PRUNED trials count, and FAIL trials whose measurement failed; a FAIL left by an
    interruption (no measurement status) does not, so resuming redoes it."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and t.user_attrs.get("status") in FAILED_STATUSES


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_abandoned(study: optuna.Study) -> int:
    """FAIL the RUNNING trials left by a killed search on this machine (its process is gone),
    so they do not sit in the dashboard forever; other hosts' trials are left alone."""
    host = socket.gethostname()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        pid = worker.get("pid")
        if worker.get("host") == host and is_int(pid) and pid != os.getpid() and not _pid_alive(pid):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            n += 1
    return n


def study_summary(study: optuna.Study) -> tuple[dict[str, int], int, list[str], list[str]]:
    """(state counts, infeasible complete trials, evaluated point keys, feasible point keys)."""
    states: dict[str, int] = {}
    infeasible = 0
    keys: dict[str, None] = {}
    feasible: dict[str, None] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
        key = t.user_attrs.get("point_key")
        evaluated = t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.user_attrs.get("status")
                                                        in FAILED_STATUSES)
        if key and evaluated:
            keys.setdefault(key, None)
        if t.state == TrialState.COMPLETE:
            if any(v > 0 for k, v in t.user_attrs.items() if k.startswith("constraint:")):
                infeasible += 1
            elif key:
                feasible.setdefault(key, None)
    return states, infeasible, list(keys), list(feasible)


def check_study(study: optuna.Study, definition: dict[str, Any], definition_digest: str) -> None:
    """Adopt a new study (record its definition) or refuse one made for another search."""
    attrs = study.user_attrs
    have = attrs.get(_DIGEST_ATTR)
    if have is None:
        if study.get_trials(deepcopy=False):
            raise SearchError(f"invalid search.study={study.study_name!r}: that study already exists in the database "
                              f"but was not created by explorer search; choose another name")
        study.set_user_attr("explorer:definition", definition)
        study.set_user_attr(_DIGEST_ATTR, definition_digest)
    elif have != definition_digest:
        old = attrs.get("explorer:definition") or {}
        changed = sorted(k for k in set(old) | set(definition)
                         if canonical_json(old.get(k)) != canonical_json(definition.get(k)))
        raise SearchError(f"invalid search.study={study.study_name!r}: that study was made for another search "
                          f"(differs in: {', '.join(changed) or 'definition'}); give a new search.study name, or "
                          f"leave it unset for the default name <space>-<sampler>-<digest>")


def count_finished(storage_url: str, study_name: str) -> Optional[int]:
    """Trials of an existing study that count toward ``trials`` (None when there is no such study)."""
    storage = optuna_storage(storage_url)
    try:
        if study_name not in optuna.get_all_study_names(storage):
            return None
        study = optuna.load_study(study_name=study_name, storage=storage)
        return sum(counts_toward_total(t) for t in study.get_trials(deepcopy=False))
    finally:
        if isinstance(storage, optuna.storages.RDBStorage):
            storage.engine.dispose()
