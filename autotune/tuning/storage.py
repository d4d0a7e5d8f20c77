"""Where studies live: an embedded journal file by default, a database server (PostgreSQL) for many workers.

Storage URLs accepted by `open_storage`:

- `None`: the embedded default, Optuna's `JournalStorage` on a `JournalFileBackend` at
  `<project_dir>/studies.journal` (project_dir defaults to `./.autotune`). We pick the journal file over SQLite
  because several processes on one machine can append to it safely (file lock, no "database is locked"),
  it survives a SIGKILL at any point (an append-only log; a half-written last line is ignored), and
  `optuna-dashboard .autotune/studies.journal` opens it directly.
- a path ending in `.journal` (or `journal:PATH`): a journal file there; an existing directory: its `studies.journal`.
- `sqlite:///file.db`, `postgresql://user:password@host:5432/db` (also `postgresql+psycopg2://`), `mysql://...`:
  Optuna's `RDBStorage` with a heartbeat (`heartbeat_interval`, `grace_period`) and a retry callback
  (`heartbeat_stale_trial_callback`, Optuna 5's name for `failed_trial_callback`; `RetryFailedTrialCallback` is its
  deprecated alias) so a trial whose worker died is failed and re-queued.

Why an explicit sweep as well. Optuna 5 runs the heartbeat only inside `Study.optimize`: `_optimize.py` calls
`fail_stale_trials(study)` before each trial and wraps the objective in a `HeartbeatThread`. `Study.ask` does
neither (it only warns that "Heartbeat of storage is supposed to be used with Study.optimize"), and the journal
storage has no heartbeat at all. The tuner asks and tells in batches, so it does both jobs itself:

- while a batch runs, `TuneStorage.heartbeat(trials)` records a heartbeat for every trial of the batch from one
  thread: the storage's own `record_heartbeat` on an RDB, a `autotune:lease` timestamp (a system attr) on a journal;
- before every ask, `TuneStorage.sweep(study)` fails RUNNING trials whose worker is gone and re-queues each as a
  WAITING trial with the same parameters (`RetryStaleTrial`, at most `max_retry` times). A worker is gone when
  its lease/heartbeat is older than `grace_period`, or, at once, when it ran on this host and its process no
  longer exists (so re-running a killed command resumes immediately instead of waiting out the grace period).
  Two sweepers racing on one trial are safe: the storage accepts only one FAIL, the loser gets
  `UpdateFinishedTrialError` and does not re-queue.

Credentials never leave this module in clear: `autotune.redact.redact_url(url)` is what is printed, logged and
recorded in studies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import StorageError
from autotune.process import process_alive, process_start
from autotune.redact import redact_url
from autotune.tuning import contract

logger = logging.getLogger(__name__)

DEFAULT_PROJECT_DIR = ".autotune"
JOURNAL_NAME = "studies.journal"
WORKER_ATTR = "autotune:worker"  # system attr: {"host", "pid", "start", "seed"} of the process running the trial
LEASE_ATTR = "autotune:lease"  # system attr: unix time of the last heartbeat (journal storage)
# (redacted storage URL, trial id) of the trials this process is evaluating right now: a RUNNING trial that
# claims to be ours but is not in here was left behind by an earlier, failed call in this same process.
_ACTIVE: set[tuple[str, int]] = set()
_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")


def worker_identity(seed: int | None = None) -> dict[str, Any]:
    """Who runs a trial: host, pid, process start time, sampler seed. Recorded on every trial it runs."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": process_start(pid), "seed": seed}


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry callback, minus this worker bookkeeping: the WAITING copy must not inherit the dead
    worker's identity or lease (a sweeper could otherwise take the new run for the dead one), nor the old
    failure attrs. A FAIL trial without `fail_kind` is one that Optuna's own heartbeat check failed: its
    worker stopped (the tuner sets `fail_kind` on every failure it tells itself)."""

    def __init__(self, max_retry: int | None = 3) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
        if self._max_retry is not None and len(history) > self._max_retry:
            logger.warning("trial %d failed and was retried %d times already: not retrying", trial.number,
                           self._max_retry)
            return
        system_attrs = {k: v for k, v in trial.system_attrs.items() if not k.startswith(("autotune:", "artifacts:"))}
        system_attrs["failed_trial"] = trial.system_attrs.get("failed_trial", trial.number)
        system_attrs["retry_history"] = history
        user_attrs = {k: v for k, v in trial.user_attrs.items() if k in ("paper_point",)}
        study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=trial.params,
                                            distributions=trial.distributions, user_attrs=user_attrs,
                                            system_attrs=system_attrs))


@dataclass
class TuneStorage:
    """An opened storage plus how the tuner keeps its trials alive and sweeps dead ones.

    `url` is already redacted: safe to print and to record."""

    storage: BaseStorage
    url: str
    kind: str  # "journal" | "rdb"
    heartbeat_interval: float
    grace_period: float
    max_retry: int | None = 3
    project_dir: Path | None = None
    _identities: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def _identity(self) -> dict[str, Any]:
        # Per pid, so that a forked child does not pass for its parent.
        pid = os.getpid()
        if pid not in self._identities:
            self._identities[pid] = worker_identity()
        return self._identities[pid]

    # -- liveness -------------------------------------------------------------------------------------------------
    def claim(self, trial: optuna.Trial, seed: int | None) -> None:
        """Mark `trial` as run by this process (host, pid, start, seed) and give it a first heartbeat."""
        ident = dict(self._identity, seed=seed)
        _ACTIVE.add((self.url, trial._trial_id))
        self._beat([trial._trial_id])  # first, so that a claimed trial always has a heartbeat
        self.storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, ident)

    def release(self, trials: Sequence[optuna.Trial]) -> None:
        """This process no longer evaluates `trials` (told, or abandoned after an error)."""
        for trial in trials:
            _ACTIVE.discard((self.url, trial._trial_id))

    def _beat(self, trial_ids: Sequence[int]) -> None:
        for trial_id in trial_ids:
            try:
                if self.kind == "rdb":
                    self.storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
                else:
                    self.storage.set_trial_system_attr(trial_id, LEASE_ATTR, time.time())
            except UpdateFinishedTrialError:
                pass  # already told
            except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the batch
                logger.warning("heartbeat for trial id %d failed: %s", trial_id, exc)

    @contextlib.contextmanager
    def heartbeat(self, trials: Sequence[optuna.Trial]) -> Iterator[None]:
        """Record heartbeats for `trials` every `heartbeat_interval` seconds while the block runs."""
        ids = [t._trial_id for t in trials]
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(self.heartbeat_interval):
                self._beat(ids)

        thread = threading.Thread(target=run, name="autotune-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _is_stale(self, trial: FrozenTrial, now: float) -> str | None:
        """Why a RUNNING trial counts as abandoned, or None if its worker may still be at it."""
        worker = trial.system_attrs.get(WORKER_ATTR)
        if isinstance(worker, dict) and worker.get("host") == self._identity["host"]:
            if worker.get("pid") == self._identity["pid"] and worker.get("start") == self._identity["start"]:
                if (self.url, trial._trial_id) in _ACTIVE:
                    return None  # ours, being evaluated
                return "this process abandoned it (an earlier run in this process stopped on an error)"
            if not process_alive(int(worker.get("pid", -1)), worker.get("start")):
                return f"its worker (pid {worker.get('pid')} on {worker.get('host')}) is gone"
        if not isinstance(worker, dict):
            # Never claimed: its worker died between `ask` and `claim`, which follow each other within
            # milliseconds. (Every worker of a study must be an autotune worker.)
            start = trial.datetime_start
            limit = min(self.grace_period, max(5.0, 2 * self.heartbeat_interval))
            if start is not None and now - start.timestamp() > limit:
                return f"never claimed by a worker in {now - start.timestamp():.0f} s"
            return None
        if self.kind == "rdb":
            return None  # claimed, so it has a heartbeat row: the storage judges it (fail_stale_trials)
        last = trial.system_attrs.get(LEASE_ATTR)
        if isinstance(last, (int, float)) and now - float(last) > self.grace_period:
            return f"no heartbeat for {now - float(last):.0f} s (grace period {self.grace_period:g} s)"
        return None

    def sweep(self, study: optuna.Study) -> list[int]:
        """Fail RUNNING trials whose worker is gone and re-queue them; returns the failed trial numbers.

        Our own checks first: a worker of this host whose process is gone is known dead at once and its trials get
        the reason (`fail_kind` "stale"); on an RDB, Optuna's heartbeat check then takes the ones left (those it
        fails carry no `fail_kind`), whichever the timing."""
        swept: list[int] = []
        now = time.time()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            reason = self._is_stale(trial, now)
            if reason is None:
                continue
            if self.fail_and_retry(study, trial, "stale", reason):
                swept.append(trial.number)
        if self.kind == "rdb":
            before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # calls RetryStaleTrial on each
            swept += sorted({t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))} - before)
        if swept:
            logger.warning("re-queued %d trial(s) left running by stopped workers: %s", len(swept), swept)
        return swept

    def fail_and_retry(self, study: optuna.Study, trial: FrozenTrial, kind: str, reason: str) -> bool:
        """Fail a RUNNING trial and queue a copy to run again. False if another process finished it first."""
        storage = study._storage  # the study's (possibly caching) view of self.storage
        try:
            # Attrs first: a finished trial cannot take them any more.
            storage.set_trial_user_attr(trial._trial_id, contract.FAIL_KIND, kind)
            storage.set_trial_user_attr(trial._trial_id, contract.FAIL_REASON, reason)
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                return False
        except UpdateFinishedTrialError:
            return False
        RetryStaleTrial(self.max_retry)(study, storage.get_trial(trial._trial_id))
        return True


def _journal(path: Path, heartbeat_interval: float, grace_period: float | None, max_retry: int | None) -> TuneStorage:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise StorageError(f"cannot open the study journal {path}: {exc.strerror or exc}; "
                           "choose a writable --storage path or project directory") from exc
    return TuneStorage(storage, str(path), "journal", heartbeat_interval, grace_period or 4 * heartbeat_interval,
                       max_retry, path.parent)


def _explain_db_error(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    low = first.lower()
    if "password authentication failed" in low or "access denied" in low or "authentication" in low:
        return f"the server refused the credentials ({first}); check the user name and password in the URL"
    if "does not exist" in low and "database" in low:
        return f"{first}; create the database first (e.g. createdb) or fix its name in the URL"
    if "could not translate host name" in low or "name or service not known" in low:
        return f"unknown host ({first}); check the host name in the URL"
    if "connection refused" in low or "timeout" in low or "timed out" in low or "could not connect" in low:
        return f"the server is unreachable ({first}); check that it runs and that host and port are right"
    return first


def _rdb(url: str, heartbeat_interval: float, grace_period: float | None, max_retry: int | None,
         connect_timeout: float) -> TuneStorage:
    import sqlalchemy
    from sqlalchemy.engine import make_url

    shown = redact_url(url)
    try:
        parsed = make_url(url)
        _ = parsed.port  # int() of the port: a malformed one fails here, not at connect time
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise StorageError(f"malformed storage URL {shown!r}: {exc}; expected e.g. "
                           "postgresql://user:password@host:5432/dbname or sqlite:///studies.db") from exc
    backend = parsed.get_backend_name()
    if parsed.drivername == "postgresql":
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; use whichever driver is installed.
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            parsed = parsed.set(drivername="postgresql+psycopg2")
            url = parsed.render_as_string(hide_password=False)
    if backend == "postgres":
        raise StorageError(f"storage URL {shown!r} uses the old scheme 'postgres://'; write 'postgresql://'")
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend in ("postgresql", "mysql", "mariadb"):
        engine_kwargs["connect_args"] = {"connect_timeout": max(1, int(connect_timeout))}
    elif backend == "sqlite" and parsed.database:
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    interval = max(1, round(heartbeat_interval))
    grace = int(grace_period) if grace_period is not None else 4 * interval
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            storage = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=interval, grace_period=grace,
                                 heartbeat_stale_trial_callback=RetryStaleTrial(max_retry))
    except sqlalchemy.exc.NoSuchModuleError as exc:
        raise StorageError(f"storage URL {shown!r}: unknown database kind {parsed.drivername!r}; "
                           "use postgresql://, mysql:// or sqlite://") from exc
    except ImportError as exc:
        missing = getattr(exc.__cause__, "name", None) or exc
        raise StorageError(f"storage URL {shown!r} needs a database driver that is not installed ({missing}); "
                           "for PostgreSQL: pip install psycopg2-binary") from exc
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        raise StorageError(f"cannot use the storage {shown}: {_explain_db_error(exc)}") from exc
    return TuneStorage(storage, shown, "rdb", float(interval), float(grace), max_retry, None)


def open_storage(url: str | os.PathLike | TuneStorage | None = None, *, project_dir: str | os.PathLike | None = None,
                 heartbeat_interval: float = 30.0, grace_period: float | None = None, max_retry: int | None = 3,
                 connect_timeout: float = 5.0) -> TuneStorage:
    """Open a study storage from a URL or path (see the module doc); fails fast with a `StorageError`.

    `heartbeat_interval` seconds between heartbeats; a RUNNING trial with no heartbeat for `grace_period`
    (default 4 intervals) is failed and re-queued (at most `max_retry` times) by the next sweep.
    """
    if isinstance(url, TuneStorage):
        return url
    if heartbeat_interval <= 0:
        raise StorageError(f"heartbeat_interval must be > 0 seconds, got {heartbeat_interval}")
    if url is None or str(url).strip() == "":
        base = Path(project_dir) if project_dir is not None else Path(DEFAULT_PROJECT_DIR)
        return _journal(base / JOURNAL_NAME, heartbeat_interval, grace_period, max_retry)
    text = str(url).strip()
    if text.startswith("journal:"):
        return _journal(Path(text[len("journal:"):].removeprefix("//")).expanduser(), heartbeat_interval,
                        grace_period, max_retry)
    if "://" in text:
        scheme = text.split("://", 1)[0].split("+", 1)[0].lower()
        if scheme in _RDB_SCHEMES:
            return _rdb(text, heartbeat_interval, grace_period, max_retry, connect_timeout)
        raise StorageError(f"unsupported storage URL {redact_url(text)!r}: use a .journal file path, sqlite:///file.db "
                           "or postgresql://user:password@host:5432/dbname")
    path = Path(text).expanduser()
    if path.is_dir():
        return _journal(path / JOURNAL_NAME, heartbeat_interval, grace_period, max_retry)
    if path.suffix in (".journal", ".log"):
        return _journal(path, heartbeat_interval, grace_period, max_retry)
    raise StorageError(f"storage {text!r} is neither a URL nor a .journal file nor a directory; use e.g. "
                       f"{DEFAULT_PROJECT_DIR}/{JOURNAL_NAME} or postgresql://user:password@host:5432/dbname")
