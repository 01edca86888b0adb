"""`tuneforge tune`: an Optuna hyperparameter search in which every trial is a normal training run.

`train.output_dir` becomes the study directory:

    study.db              the Optuna study (SQLite) unless tune.storage names a database; running the
                          command again continues it
    trial-000/, ...       one run directory per trial (metrics.jsonl, checkpoints, final/, manifest.json)
    best.yaml             the best trial's config, with train.output_dir set to <dir>/best to retrain it
    trials.json           every trial: state, value, parameters, validation curve, run directory
    summary.md            the same as a table

Trials are sampled by TPE (seeded with train.seed) and pruned by the median rule on the validation metric that
the training loop reports after every validation.

Several processes (on one machine or many) share a search by giving the same tune.storage (e.g. PostgreSQL):
each asks the study for its next trial, so trials are split between them and none runs twice. A running trial
sends a heartbeat every tune.heartbeat_s; one silent for twice as long (its process killed, its machine lost)
is marked failed by whichever process notices and run again with the same values. Each process stops when
tune.trials trials have completed or been pruned and none is still running, and writes the final summary.
"""

from __future__ import annotations

import copy
import difflib
import gc
import os
import socket
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import yaml

from tuneforge.artifacts import write_json_atomic, write_text_atomic
from tuneforge.config import ConfigSource, RunConfig, SearchParam, config_from_dict, config_keys
from tuneforge.errors import TuneforgeError
from tuneforge.train.search_summary import StudySummary, TrialRow, summary_markdown

if TYPE_CHECKING:
    import optuna

STUDY_DB = "study.db"
SEARCHABLE_SECTIONS = ("data", "model", "method", "train")
# Where a trial writes is decided by the search itself, not sampled.
NOT_SEARCHABLE = ("train.output_dir", "data.output_dir")
# Keys that may change when a study is continued: they do not change what a trial computes.
# train.output_dir: processes on different machines share a study (tune.storage) from their own folders.
CONTINUABLE_CHANGES = (
    "tune.trials",
    "tune.heartbeat_s",
    "train.progress",
    "train.log_to",
    "train.output_dir",
)
# How often a trial whose process stopped sending heartbeats is run again (a trial that takes down its process
# every time, e.g. killed for memory, must not keep the search busy forever).
RETRIES_OF_A_LOST_TRIAL = 2
LOWER_IS_BETTER = ("loss", "perplexity")
HIGHER_IS_BETTER = ("accuracy",)


class _StudyError(TuneforgeError):
    """A problem that every trial would hit (not a trial's own failure), so the search stops at once."""


# ------------------------------------------------------------------------------------------------------------
# The search space: keys and values are checked before any trial runs, with errors naming tune.space.<key>.


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _annotation(key: str, method_options: Any) -> Any:
    """The declared type of a config key (method options come from the approach's own Options model)."""
    *parents, leaf = key.split(".")
    if parents == ["method"]:
        fields = type(method_options).model_fields if method_options is not None else {}
        return fields[leaf].annotation if leaf in fields else None
    model: Any = RunConfig
    for part in parents:
        model = model.model_fields[part].annotation
    return model.model_fields[leaf].annotation


def _takes_whole_numbers_only(annotation: Any) -> bool:
    kinds = {annotation} if annotation in (int, float) else set(get_args(annotation)) - {type(None)}
    return kinds == {int}


def _value_problem(base: dict[str, Any], key: str, value: Any) -> str | None:
    """Why `key=value` would not make a valid run config, or None when it would."""
    from pydantic import ValidationError

    from tuneforge.models import resolve_method

    raw = copy.deepcopy(base)
    _set_dotted(raw, key, value)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        return "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
    if key.startswith("method."):
        try:
            resolve_method(cfg.method, task=cfg.model.task)
        except TuneforgeError as err:
            return err.what.replace("\n  ", " ")
    return None


def check_space(cfg: RunConfig, source: ConfigSource | None = None) -> None:
    """Check every tune.space key names a searchable config key and every value it can take is valid there."""
    from tuneforge.models import resolve_method

    source = source or ConfigSource(None)
    tune = cfg.tune
    if not tune.space:
        raise TuneforgeError(
            "the search space is empty",
            where=source.where("tune.space"),
            fix="add e.g. tune.space: {train.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3}}",
        )
    lower = tune.metric in LOWER_IS_BETTER
    if (lower and tune.direction == "maximize") or (
        tune.metric in HIGHER_IS_BETTER and tune.direction == "minimize"
    ):
        raise TuneforgeError(
            f"{tune.metric} is better when {'lower' if lower else 'higher'}, "
            f"but tune.direction is {tune.direction}",
            where=source.where("tune.direction"),
            fix=f"set tune.direction: {'minimize' if lower else 'maximize'}",
        )
    known = {k for k, *_ in config_keys() if k.split(".")[0] in SEARCHABLE_SECTIONS}
    base = cfg.to_dict()
    _, method_options = resolve_method(cfg.method, source, task=cfg.model.task)
    for key, param in tune.space.items():
        where = source.where(f"tune.space.{key}")
        section = key.split(".")[0]
        if section not in SEARCHABLE_SECTIONS or key in NOT_SEARCHABLE:
            raise TuneforgeError(
                f"{key} cannot be searched",
                where=where,
                fix="search keys of the data, model, method and train sections (not output directories)",
            )
        if section == "method":
            if key.count(".") != 1:
                raise TuneforgeError(
                    f"{key} is not a method option", where=where, fix="write method.<option>"
                )
        elif key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            raise TuneforgeError(
                f"{key} is not a config key",
                where=where,
                fix=f"did you mean {close[0]}?" if close else "see `tuneforge config-keys`",
            )
        if param.type == "float" and _takes_whole_numbers_only(_annotation(key, method_options)):
            raise TuneforgeError(
                f"{key} takes whole numbers, but its search parameter is a float",
                where=where,
                fix="use type: int",
            )
        values = list(param.choices or []) if param.type == "categorical" else [param.low, param.high]
        for value in values:
            problem = _value_problem(base, key, value)
            if problem is not None:
                raise TuneforgeError(f"{key}={value!r} is not a valid setting: {problem}", where=where)
    for i, start in enumerate(tune.start_with):
        for key, value in start.items():
            if key not in tune.space:
                raise TuneforgeError(
                    f"{key} is not in tune.space",
                    where=source.where("tune.start_with"),
                    fix="add it to the space",
                )
            problem = _value_problem(base, key, value)
            if problem is not None:
                raise TuneforgeError(
                    f"{key}={value!r} is not a valid setting: {problem}",
                    where=source.where(f"tune.start_with.{i}"),
                )


def trial_config(cfg: RunConfig, values: dict[str, Any], run_dir: Path) -> RunConfig:
    """The run config of one trial: the base config with the sampled values, writing into its own folder."""
    raw = cfg.to_dict()
    for key, value in values.items():
        _set_dotted(raw, key, value)
    raw["train"]["output_dir"] = str(run_dir)
    # Each run keeps its best checkpoint by the metric the search optimises: its result is what it scored.
    raw["train"]["metric_for_best"] = cfg.tune.metric
    return config_from_dict(raw)


def _suggest(trial: optuna.Trial, key: str, p: SearchParam) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(key, list(p.choices or []))
    assert p.low is not None and p.high is not None  # guaranteed by SearchParam's validator
    if p.type == "int":
        return trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(key, float(p.low), float(p.high), step=p.step, log=p.log)


# ------------------------------------------------------------------------------------------------------------
# The study.


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class _RetryLostTrials:
    """Queues a trial whose process was lost to run again with the same values (optuna's retry callback), and
    remembers which queued trials this process queued: those it takes itself when the study's other trials
    are all taken, so that two waiting processes never both start one (the second would start a new trial)."""

    def __init__(self) -> None:
        import optuna

        # optuna 4.9 renamed the callback; the older name is kept for the releases our range still allows.
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        retry = retry or optuna.storages.RetryFailedTrialCallback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.inner = retry(max_retry=RETRIES_OF_A_LOST_TRIAL)
        self.queued: set[int] = set()  # numbers of the lost trials this process queued again

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.inner(study, trial)
        self.queued.add(trial.number)

    def storage_argument(self) -> dict[str, Any]:
        import optuna

        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
            return {"heartbeat_stale_trial_callback": self}
        return {"failed_trial_callback": self}


def _storage(
    cfg: RunConfig, out: Path, source: ConfigSource, retry: _RetryLostTrials
) -> optuna.storages.RDBStorage:
    """The study's database with heartbeats on: tune.storage, or study.db (SQLite) in the output folder."""
    import optuna
    import sqlalchemy

    url = cfg.tune.storage or f"sqlite:///{(out / STUDY_DB).resolve()}"
    beat = cfg.tune.heartbeat_s
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=beat, grace_period=2 * beat, **retry.storage_argument()
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Processes started together all create optuna's tables in a new database; the losers retry.
            if attempt == 2:
                raise
            time.sleep(1 + attempt)
        except (ImportError, sqlalchemy.exc.ArgumentError, sqlalchemy.exc.OperationalError) as err:
            shown = (
                sqlalchemy.engine.make_url(url).render_as_string(hide_password=True) if "://" in url else url
            )
            raise TuneforgeError(
                f"cannot open the study database {shown}: {str(err).splitlines()[0]}",
                where=source.where("tune.storage"),
                fix="check the URL, that the database server is up and reachable, and that its driver is "
                "installed (PostgreSQL: pip install 'tuneforge[postgres]')",
            ) from None
    raise AssertionError("unreachable")


def _open_study(
    cfg: RunConfig, out: Path, force: bool, source: ConfigSource, retry: _RetryLostTrials
) -> optuna.Study:
    import optuna

    from tuneforge.train.resume import config_diff

    if not (out / STUDY_DB).is_file() and (out / "config.yaml").is_file():
        raise TuneforgeError(
            f"{out} holds a training run, not a search",
            where="train.output_dir",
            fix="choose another train.output_dir for the search",
        )
    out.mkdir(parents=True, exist_ok=True)
    storage = _storage(cfg, out, source, retry)
    tune, name = cfg.tune, cfg.tune.study_name
    existing = name in optuna.study.get_all_study_names(storage)
    before = optuna.load_study(study_name=name, storage=storage).trials if existing else []
    # A continued study gets a sampler seeded past the trials it has, so it does not replay the first draws;
    # processes sharing a study start together, so each one also mixes in its process id.
    shared = tune.storage is not None or any(t.state.name == "RUNNING" for t in before)
    seed = cfg.train.seed + len(before) + (os.getpid() if shared else 0)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=tune.startup_trials)
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=tune.prune_startup_trials, n_warmup_steps=tune.prune_warmup_steps
        )
        if tune.prune
        else optuna.pruners.NopPruner()
    )
    try:
        # Creating is atomic in the database: of processes started together, exactly one creates the study
        # and queues tune.start_with.
        study = optuna.create_study(
            storage=storage, study_name=name, direction=tune.direction, sampler=sampler, pruner=pruner
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        created = False
    now = cfg.to_dict()
    old = study.user_attrs.get("config")
    if old is not None:
        diffs = [d for d in config_diff(old, now) if not d[0].startswith(CONTINUABLE_CHANGES)]
        if diffs and not force:
            lines = "\n  ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs)
            raise TuneforgeError(
                f"the config differs from the one this search started with:\n  {lines}",
                where=str(out / STUDY_DB) if tune.storage is None else source.where("tune.storage"),
                fix="continue with the original config, pass --force to go on with the new one, "
                "or choose another train.output_dir" + (" or tune.study_name" if tune.storage else ""),
            )
    study.set_user_attr("config", now)
    if created:
        for values in tune.start_with:
            study.enqueue_trial(values)
    return study


WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _left_behind(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial no live process will finish: one from before heartbeats (no worker recorded), or one
    whose process on this machine is gone (no need to wait out its heartbeat's grace period)."""
    import psutil

    worker = trial.user_attrs.get("worker")
    if not isinstance(worker, str):
        return True
    host, _, pid = worker.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid))


def _fail_left_behind(study: optuna.Study, retry: _RetryLostTrials) -> None:
    from optuna.trial import TrialState

    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _left_behind(stale):
            continue
        try:
            study.tell(stale.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):
            continue  # another process got there first
        retry(study, study.get_trials(deepcopy=False)[stale.number])
        _say(f"trial {stale.number} was left unfinished by a search that stopped; counted as failed")


class _Heartbeat:
    """Records a trial's heartbeat every tune.heartbeat_s while it runs.

    Optuna beats only inside `study.optimize`; this search drives the study with ask/tell (to count, print
    and stop its own way), so it beats itself through the storage's public `record_heartbeat`.
    """

    def __init__(self, storage: Any, trial_id: int, every: float) -> None:
        self.storage, self.trial_id, self.every = storage, trial_id, every
        self.stop = threading.Event()
        storage.record_heartbeat(trial_id)  # before anyone could see the trial without one
        self.thread = threading.Thread(target=self._beat, name="tune-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop.wait(self.every):
            self.storage.record_heartbeat(self.trial_id)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def _take_queued(
    queued: list[optuna.trial.FrozenTrial],
    retry: _RetryLostTrials,
    first_seen: dict[int, float],
    cfg: RunConfig,
) -> bool:
    """Whether to start a queued trial although the queue fills the study: one of tune.start_with, a re-run
    this process queued, or a re-run its queuer left waiting for three heartbeats (that process is gone)."""
    now = time.monotonic()
    for t in queued:
        history = t.system_attrs.get("retry_history")
        if not history or history[-1] in retry.queued:
            return True
        if now - first_seen.setdefault(t.number, now) > 3 * cfg.tune.heartbeat_s:
            return True
    return False


def run_search(
    cfg: RunConfig, source: ConfigSource | None = None, *, trials: int | None = None, force: bool = False
) -> StudySummary:
    """Run (or continue, or join) the search until the study has `trials` completed or pruned trials and
    none is still running."""
    import optuna
    from optuna.trial import TrialState

    from tuneforge.train.run import Interrupted

    source = source or ConfigSource(None)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TuneforgeError(
            "tune runs its trials one after another in a single process",
            fix="start `tuneforge tune` directly, not through accelerate launch or torchrun (to use several "
            "machines or GPUs, start one `tuneforge tune` per GPU with a shared tune.storage)",
        )
    check_space(cfg, source)
    n_trials = trials if trials is not None else cfg.tune.trials
    out = Path(cfg.train.output_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # we print one line per trial ourselves
    retry = _RetryLostTrials()
    study = _open_study(cfg, out, force, source, retry)
    _fail_left_behind(study, retry)
    first_seen: dict[int, float] = {}  # when this process first saw each queued trial

    failures, said_waiting = 0, False
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # other processes' trials whose heartbeat stopped
        now = study.get_trials(deepcopy=False)
        states = Counter(t.state for t in now)
        done = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
        running = states[TrialState.RUNNING]
        queued = [t for t in now if t.state == TrialState.WAITING]
        if done >= n_trials and running == 0:
            break
        # A trial running elsewhere counts towards the total: if its process is lost, it is run again. Queued
        # trials count too: of processes that find the rest taken, only one may start a re-run.
        full = done + running + len(queued) >= n_trials
        if done + running >= n_trials or (full and not _take_queued(queued, retry, first_seen, cfg)):
            if not said_waiting:
                _say(f"waiting for {running} trial(s) running in other processes")
                said_waiting = True
            time.sleep(cfg.tune.heartbeat_s)
            continue
        said_waiting = False
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for study.optimize: _Heartbeat is why they work here.
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            trial = study.ask()
        heartbeat = _Heartbeat(study._storage, trial._trial_id, cfg.tune.heartbeat_s)
        trial.set_user_attr("worker", WORKER)
        run_dir = out / f"trial-{trial.number:03d}"
        try:
            value = _run_trial(trial, cfg, source, run_dir)
        except optuna.TrialPruned as pruned:
            _mark_run(run_dir, status="pruned", error=None)
            study.tell(trial, state=TrialState.PRUNED)
            _say(f"trial {trial.number} pruned ({pruned})")
            failures = 0
        except Interrupted:
            trial.set_user_attr("error", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            raise
        except _StudyError:
            study.tell(trial, state=TrialState.FAIL)
            raise
        except TuneforgeError as err:
            # A trial's own failure (e.g. its learning rate made the loss diverge) is a result, not the end.
            trial.set_user_attr("error", err.what[:500])
            study.tell(trial, state=TrialState.FAIL)
            _say(f"trial {trial.number} failed: {err.what}")
            failures += 1
            if failures >= cfg.tune.max_consecutive_failures:
                raise TuneforgeError(
                    f"{failures} trials in a row failed; the last one: {err.what}",
                    where=source.where("tune.max_consecutive_failures"),
                    fix="fix the problem above (or narrow tune.space) and run the command again to continue",
                ) from None
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
            best = study.best_trial
            _say(
                f"trial {trial.number} finished: {cfg.tune.metric}={value:.6g} (best: trial {best.number}, "
                f"{best.value:.6g})"
            )
            failures = 0
        finally:
            heartbeat.close()
            _release_memory()
        summarize(study, cfg, out)
    summary = summarize(study, cfg, out)
    if summary.best is None:
        raise TuneforgeError(
            "no trial ran to the end (all were pruned or failed)",
            where=str(out / "trials.json"),
            fix="run more trials (--trials), or raise tune.prune_startup_trials",
        )
    return summary


def _run_trial(trial: optuna.Trial, cfg: RunConfig, source: ConfigSource, run_dir: Path) -> float:
    """Train one trial, reporting each validation to the pruner; its value is its best validation metric."""
    import optuna

    from tuneforge.train.run import train

    values = {key: _suggest(trial, key, p) for key, p in cfg.tune.space.items()}
    trial.set_user_attr("run_dir", str(run_dir))
    _say(f"trial {trial.number}: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
    tcfg = trial_config(cfg, values, run_dir)
    metric, reported = cfg.tune.metric, []

    def on_validation(step: int, metrics: dict[str, float]) -> None:
        if metric not in metrics:
            raise _StudyError(
                f"validation has no metric {metric!r} (it has {sorted(metrics)})",
                where=source.where("tune.metric"),
                fix="choose one of those",
            )
        value = float(metrics[metric])
        reported.append(value)
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"{metric}={value:.6g} at step {step} is worse than the median")

    # The sampled keys (and what trial_config sets) are the trial's own: recipe defaults fill only the rest.
    given = set(values) | {"train.output_dir", "train.metric_for_best"}
    train(tcfg, source.with_given(given), overwrite=True, on_validation=on_validation)
    if not reported:
        raise _StudyError(
            "the trial ran no validation, so there is nothing to compare trials by",
            where=source.where("data.splits"),
            fix="give the dataset a validation split",
        )
    return min(reported) if cfg.tune.direction == "minimize" else max(reported)


def _mark_run(run_dir: Path, **fields: Any) -> None:
    from tuneforge.artifacts import RunDir

    run = RunDir(run_dir)
    if run.manifest_path.is_file():
        run.update_manifest(**fields)


def _release_memory() -> None:
    # Trials run in one process: drop the last trial's model before the next one loads its own.
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------------
# Results: trials.json, summary.md and best.yaml, rewritten after every trial so a long search can be watched.


def summarize(study: optuna.Study, cfg: RunConfig, out: Path) -> StudySummary:
    """Collect the study's trials, write trials.json, summary.md and best.yaml, and return them."""
    from optuna.trial import TrialState

    summary = StudySummary(
        path=out, metric=cfg.tune.metric, direction=cfg.tune.direction, params=list(cfg.tune.space)
    )
    trials = study.get_trials(deepcopy=False)
    # RetryFailedTrialCallback's copies name the trials they re-run (the last of their retry history).
    rerun_as = {
        t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")
    }
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        error = t.user_attrs.get("error")
        if t.state == TrialState.FAIL and error is None:
            error = "its process stopped before it ended (killed, or its machine lost)"
        if t.number in rerun_as:
            error = f"{error}; run again as trial {rerun_as[t.number]}"
        summary.trials.append(
            TrialRow(
                number=t.number,
                state=t.state.name.lower(),
                value=t.value if t.state == TrialState.COMPLETE else None,
                params=dict(t.params),
                intermediate={int(k): float(v) for k, v in sorted(t.intermediate_values.items())},
                run_dir=str(t.user_attrs.get("run_dir", out / f"trial-{t.number:03d}")),
                error=error,
                duration_s=round(duration, 2) if duration is not None else None,
                worker=t.user_attrs.get("worker"),
            )
        )
    complete = [t for t in summary.trials if t.state == "complete"]
    if complete:
        best_number = study.best_trial.number
        summary.best = next(t for t in complete if t.number == best_number)
        summary.best_config = out / "best.yaml"
        _write_best(summary.best, cfg, out)
    write_json_atomic(
        out / "trials.json",
        {
            "metric": summary.metric,
            "direction": summary.direction,
            "best_trial": summary.best.number if summary.best else None,
            "trials": [t.__dict__ for t in summary.trials],
        },
    )
    write_text_atomic(out / "summary.md", summary_markdown(summary))
    return summary


def _write_best(best: TrialRow, cfg: RunConfig, out: Path) -> None:
    best_cfg = trial_config(cfg, best.params, out / "best")
    header = (
        f"# Best trial of the search in {out}: trial {best.number}, {cfg.tune.metric}={best.value}\n"
        f"# Its run: {best.run_dir}. Retrain it with: tuneforge train {out / 'best.yaml'}\n"
    )
    write_text_atomic(out / "best.yaml", header + yaml.safe_dump(best_cfg.to_dict(), sort_keys=False))
