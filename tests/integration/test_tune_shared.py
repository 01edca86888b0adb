"""Several `tuneforge tune` processes share one study in a real PostgreSQL (tune.storage).

One worker is frozen mid-trial (SIGSTOP: its heartbeat stops, as when a machine is lost), two more join: they
split the remaining trials, the frozen worker's trial is marked failed and run again with the same values, no
trial runs twice, and the summary equals that of a one-process search over the same values.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.postgres import throwaway_postgres
from tests.tiny import sentiment_rows, write_csv

TRIALS = 3


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with throwaway_postgres() as url:
        yield url


def config(tiny_llama: Path, out: str, **tune: object) -> dict:
    return {
        "data": {"path": "data.csv", "format": "classification", "output_dir": "ds"},
        "model": {"name": str(tiny_llama), "task": "causal-lm", "max_length": 128},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {
            "output_dir": out,
            "max_steps": 2,
            "batch_size": 4,
            "warmup_ratio": 0.0,
            "eval_every": 1,
            "eval_max_examples": 8,
            "save_every": 0,
            "progress": False,
        },
        "tune": {
            "prune": False,
            "trials": TRIALS,
            "space": {
                "train.learning_rate": {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True},
                "method.r": {"type": "categorical", "choices": [2, 4, 8]},
            },
            **tune,
        },
    }


def start(tmp_path: Path, name: str, config_file: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / f"{name}.log", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "tuneforge", "tune", config_file],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )


def wait_for(what: str, done: Callable[[], bool], timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def finished_lines(log: Path) -> set[int]:
    return {int(n) for n in re.findall(r"^trial (\d+) finished", log.read_text(), re.MULTILINE)}


def test_two_workers_split_the_trials_and_rerun_a_lost_ones(
    tmp_path: Path, tiny_llama: Path, postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna
    from optuna.trial import TrialState

    from tuneforge.config import load_config
    from tuneforge.data import prepare_dataset
    from tuneforge.train.search import run_search

    write_csv(tmp_path / "data.csv", sentiment_rows(60))
    shared = config(tiny_llama, "study", storage=postgres, heartbeat_s=1)
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(shared))
    monkeypatch.chdir(tmp_path)  # the workers' working directory, for the relative paths in the config
    cfg, _ = load_config(tmp_path / "tune.yaml")
    prepare_dataset(cfg.data, model=cfg.model)  # prepared once, before the workers read it together

    lost = start(tmp_path, "lost", "tune.yaml")
    try:
        wait_for("the first worker's trial", lambda: (tmp_path / "study" / "trial-000").is_dir())
        lost.send_signal(signal.SIGSTOP)  # alive but silent: only its missing heartbeat tells
        workers = [start(tmp_path, name, "tune.yaml") for name in ("a", "b")]
        codes = [w.wait(timeout=600) for w in workers]
    finally:
        lost.kill()
        lost.wait()
    logs = [(tmp_path / f"{name}.log").read_text() for name in ("a", "b")]
    assert codes == [0, 0], logs

    study = optuna.load_study(study_name="tuneforge", storage=postgres)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * TRIALS
    first, rerun = trials[0], next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert rerun.params == first.params and rerun.number > 0  # the lost trial, run again with its values
    # Neither repeated nor lost: each complete trial was finished by exactly one of the two workers.
    done_a, done_b = (finished_lines(tmp_path / f"{name}.log") for name in ("a", "b"))
    assert not done_a & done_b and done_a | done_b == {1, 2, 3} and done_a and done_b
    for t in trials[1:]:
        manifest = json.loads((tmp_path / "study" / f"trial-{t.number:03d}" / "manifest.json").read_text())
        assert manifest["status"] == "completed"
        assert t.user_attrs["worker"].endswith(f":{workers[0 if t.number in done_a else 1].pid}")

    saved = json.loads((tmp_path / "study" / "trials.json").read_text())  # written once all trials ended
    assert [(r["number"], r["state"]) for r in saved["trials"]] == [
        (t.number, t.state.name.lower()) for t in trials
    ]
    assert saved["trials"][0]["error"] == (
        "its process stopped before it ended (killed, or its machine lost); "
        f"run again as trial {rerun.number}"
    )

    # The same values in one process (SQLite, the default) give the same results and the same best trial.
    complete = trials[1:]
    solo = config(tiny_llama, "solo", start_with=[t.params for t in complete])
    (tmp_path / "solo.yaml").write_text(yaml.safe_dump(solo))
    run_search(*load_config(tmp_path / "solo.yaml"))
    alone = json.loads((tmp_path / "solo" / "trials.json").read_text())

    def results(rows: list[dict]) -> list[tuple]:
        return [(r["params"], r["value"], r["intermediate"]) for r in rows if r["state"] == "complete"]

    assert results(alone["trials"]) == results(saved["trials"][1:])
    best = {r["number"]: r for r in saved["trials"]}[saved["best_trial"]]
    best_alone = {r["number"]: r for r in alone["trials"]}[alone["best_trial"]]
    assert (best["params"], best["value"]) == (best_alone["params"], best_alone["value"])
