"""The search space is checked before any trial runs, with errors naming tune.space.<key> and its line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneforge.config import load_config
from tuneforge.errors import TuneforgeError
from tuneforge.train.search import check_space, trial_config
from tuneforge.train.search_summary import StudySummary, TrialRow, summary_markdown

BASE = {
    "data": {"path": "data.csv"},
    "model": {"name": "some-model", "task": "causal-lm"},
    "method": {"name": "lora", "r": 8},
    "train": {"output_dir": "runs/search", "batch_size": 4},
}


def write_config(tmp_path: Path, tune: dict) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({**BASE, "tune": tune}, sort_keys=False), encoding="utf-8")
    return path


def line_of(path: Path, text: str) -> int:
    """1-based line of the first line containing `text` (what the error should point at)."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def space_error(tmp_path: Path, tune: dict) -> str:
    path = write_config(tmp_path, tune)
    cfg, source = load_config(path)
    with pytest.raises(TuneforgeError) as err:
        check_space(cfg, source)
    return err.value.render()


def load_error(tmp_path: Path, tune: dict) -> str:
    path = write_config(tmp_path, tune)
    with pytest.raises(TuneforgeError) as err:
        load_config(path)
    return err.value.render()


def test_a_good_space_passes(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "space": {
                "train.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
                "train.batch_size": {"type": "int", "low": 2, "high": 16, "step": 2},
                "method.r": {"type": "categorical", "choices": [4, 8, 16]},
                "method.dropout": {"type": "float", "low": 0.0, "high": 0.2},
            },
            "start_with": [{"train.learning_rate": 2e-4, "method.r": 8}],
        },
    )
    cfg, source = load_config(path)
    check_space(cfg, source)
    assert cfg.tune.space["train.batch_size"].step == 2


def test_empty_space(tmp_path: Path) -> None:
    text = space_error(tmp_path, {"trials": 3})
    line = line_of(tmp_path / "tune.yaml", "tune:")
    assert text == (
        f"{tmp_path / 'tune.yaml'}:{line} (tune.space): the search space is empty\n"
        "  fix: add e.g. tune.space: {train.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3}}"
    )


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    text = space_error(
        tmp_path, {"space": {"train.learnig_rate": {"type": "float", "low": 1e-5, "high": 1e-3}}}
    )
    line = line_of(tmp_path / "tune.yaml", "train.learnig_rate")
    assert text == (
        f"{tmp_path / 'tune.yaml'}:{line} (tune.space.train.learnig_rate): "
        "train.learnig_rate is not a config key\n"
        "  fix: did you mean train.learning_rate?"
    )


@pytest.mark.parametrize("key", ["train.output_dir", "eval.batch_size", "tune.trials"])
def test_keys_that_cannot_be_searched(tmp_path: Path, key: str) -> None:
    text = space_error(tmp_path, {"space": {key: {"type": "categorical", "choices": [1, 2]}}})
    assert f"(tune.space.{key}): {key} cannot be searched\n" in text


@pytest.mark.parametrize("key", ["train.batch_size", "method.r"])
def test_float_parameter_for_a_whole_number_key(tmp_path: Path, key: str) -> None:
    text = space_error(tmp_path, {"space": {key: {"type": "float", "low": 2, "high": 16}}})
    assert text.endswith(
        f"(tune.space.{key}): {key} takes whole numbers, but its search parameter is a float\n"
        "  fix: use type: int"
    )


def test_bound_outside_the_keys_range(tmp_path: Path) -> None:
    text = space_error(
        tmp_path, {"space": {"train.warmup_ratio": {"type": "float", "low": 0.0, "high": 1.5}}}
    )
    assert text.endswith(
        "(tune.space.train.warmup_ratio): train.warmup_ratio=1.5 is not a valid setting: "
        "Input should be less than 1"
    )


def test_invalid_method_option_value(tmp_path: Path) -> None:
    text = space_error(tmp_path, {"space": {"method.r": {"type": "categorical", "choices": [0, 8]}}})
    assert "(tune.space.method.r): method.r=0 is not a valid setting: invalid method options:" in text
    assert "greater than or equal to 1" in text


def test_unknown_method_option(tmp_path: Path) -> None:
    text = space_error(tmp_path, {"space": {"method.rank": {"type": "int", "low": 4, "high": 8}}})
    assert "(tune.space.method.rank): method.rank=4 is not a valid setting: invalid method options:" in text
    assert "unknown option for lora" in text


def test_direction_must_fit_the_metric(tmp_path: Path) -> None:
    text = space_error(
        tmp_path,
        {
            "direction": "maximize",
            "space": {"train.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
        },
    )
    line = line_of(tmp_path / "tune.yaml", "direction:")
    assert text == (
        f"{tmp_path / 'tune.yaml'}:{line} (tune.direction): "
        "loss is better when lower, but tune.direction is maximize\n"
        "  fix: set tune.direction: minimize"
    )


def test_start_with_must_use_keys_of_the_space(tmp_path: Path) -> None:
    text = space_error(
        tmp_path,
        {
            "space": {"train.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
            "start_with": [{"train.weight_decay": 0.1}],
        },
    )
    assert "(tune.start_with): train.weight_decay is not in tune.space\n  fix: add it to the space" in text


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "float", "low": 1e-3, "high": 1e-5}, "low (0.001) must be smaller than high (1e-05)"),
        ({"type": "float", "low": 0.0, "high": 1e-3, "log": True}, "log scale needs low > 0"),
        ({"type": "float", "low": 1e-5}, "a float parameter needs both low and high"),
        ({"type": "int", "low": 1.5, "high": 4}, "an int parameter needs whole numbers for low"),
        ({"type": "categorical"}, "a categorical parameter needs a non-empty list of choices"),
        (
            {"type": "categorical", "choices": [1], "low": 0},
            "a categorical parameter takes only choices, not low",
        ),
        (
            {"type": "float", "low": 1e-5, "high": 1e-3, "log": True, "step": 1e-5},
            "step and log cannot be combined",
        ),
        ({"type": "int", "low": 1, "high": 4, "choices": [1]}, "choices belong to categorical parameters;"),
    ],
)
def test_malformed_parameters_are_config_errors(tmp_path: Path, spec: dict, message: str) -> None:
    text = load_error(tmp_path, {"space": {"train.learning_rate": spec}})
    line = line_of(tmp_path / "tune.yaml", "train.learning_rate:")
    assert f"{tmp_path / 'tune.yaml'}:{line} (tune.space.train.learning_rate): {message}" in text


def test_unknown_parameter_field(tmp_path: Path) -> None:
    text = load_error(
        tmp_path, {"space": {"train.learning_rate": {"type": "float", "low": 1, "high": 2, "lo": 1}}}
    )
    assert "unknown key 'tune.space.train.learning_rate.lo'" in text


def test_trial_config_applies_values_and_its_own_directory(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {"metric": "perplexity", "space": {"method.r": {"type": "categorical", "choices": [4, 8]}}},
    )
    cfg, _ = load_config(path)
    trial = trial_config(cfg, {"train.learning_rate": 3e-4, "method.r": 4}, tmp_path / "trial-007")
    assert trial.train.learning_rate == 3e-4
    assert trial.method.options()["r"] == 4
    assert trial.train.output_dir == str(tmp_path / "trial-007")
    assert trial.train.metric_for_best == "perplexity"
    assert trial.train.batch_size == 4  # untouched keys stay as configured
    assert cfg.method.options()["r"] == 8  # the base config is not modified


def test_summary_markdown() -> None:
    rows = [
        TrialRow(0, "complete", 1.25, {"train.learning_rate": 1e-4}, {2: 1.5, 4: 1.25}, "s/trial-000"),
        TrialRow(1, "pruned", None, {"train.learning_rate": 0.5}, {2: 2.0}, "s/trial-001"),
    ]
    summary = StudySummary(
        Path("s"), "loss", "minimize", ["train.learning_rate"], rows, rows[0], Path("s/best.yaml")
    )
    assert summary_markdown(summary) == (
        "# Hyperparameter search: loss (minimize)\n\n"
        "2 trials: 1 complete, 1 pruned, 0 failed.\n"
        "Best: trial 0 (loss=1.25), run s/trial-000; its config: s/best.yaml.\n\n"
        "| trial | state | loss | train.learning_rate | steps |\n"
        "|---|---|---|---|---|\n"
        "| 0 * | complete | 1.25 | 0.0001 | 4 |\n"
        "| 1 | pruned | - | 0.5 | 2 |\n\n"
        "`steps`: the last optimizer step at which the trial was validated; `*`: the best trial.\n"
    )


def test_the_shipped_search_config_has_a_valid_space() -> None:
    path = Path(__file__).resolve().parents[3] / "configs" / "tune-lora.yaml"
    cfg, source = load_config(path)
    check_space(cfg, source)
    assert sorted(cfg.tune.space) == [
        "method.alpha",
        "method.dropout",
        "method.r",
        "train.batch_size",
        "train.learning_rate",
        "train.warmup_ratio",
        "train.weight_decay",
    ]


# ------------------------------------------------------------------------------------------------------------
# The search loop with a stand-in for training (each "run" reports what the test scripts), so the study's
# bookkeeping is tested in milliseconds; the real thing runs in tests/integration/test_tune.py.


def scripted_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script, tune: dict):
    """Configure a search whose trials call `script(learning_rate, on_validation)` instead of training."""
    import tuneforge.train.run as run_module

    def fake_train(cfg, source=None, *, overwrite=False, on_validation=None, **_):
        assert overwrite and on_validation is not None
        Path(cfg.train.output_dir).mkdir(parents=True)
        script(cfg.train.learning_rate, on_validation)

    monkeypatch.setattr(run_module, "train", fake_train)
    tune = {
        "space": {"train.learning_rate": {"type": "float", "low": 1e-5, "high": 1.0, "log": True}},
        **tune,
    }
    cfg, source = load_config(write_config(tmp_path, tune), [f"train.output_dir={tmp_path / 'study'}"])
    return cfg, source


def study_states(tmp_path: Path) -> list[tuple[str, dict]]:
    import optuna

    study = optuna.load_study(study_name="tuneforge", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    return [(t.state.name, t.user_attrs.get("error")) for t in study.trials]


def test_a_failed_trial_is_recorded_and_the_search_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneforge.train.search import run_search

    def script(lr: float, report) -> None:
        if lr == 0.5:  # only the enqueued first trial
            raise TuneforgeError("5 optimizer steps in a row had a NaN/inf loss")
        report(1, {"loss": 2.0 + lr})
        report(2, {"loss": 1.0 + lr})

    cfg, source = scripted_search(
        tmp_path, monkeypatch, script, {"prune": False, "start_with": [{"train.learning_rate": 0.5}]}
    )
    summary = run_search(cfg, source, trials=2)
    assert study_states(tmp_path) == [
        ("FAIL", "5 optimizer steps in a row had a NaN/inf loss"),
        ("COMPLETE", None),
        ("COMPLETE", None),
    ]
    assert [t.state for t in summary.trials] == ["fail", "complete", "complete"]
    best = summary.best
    assert (
        best is not None and best.value == 1.0 + best.params["train.learning_rate"]
    )  # the best of its values
    assert "3 trials: 2 complete, 0 pruned, 1 failed." in (tmp_path / "study" / "summary.md").read_text()


def test_failures_in_a_row_stop_the_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneforge.train.search import run_search

    def script(lr: float, report) -> None:
        raise TuneforgeError("the data is broken")

    cfg, source = scripted_search(tmp_path, monkeypatch, script, {"max_consecutive_failures": 2})
    with pytest.raises(TuneforgeError) as err:
        run_search(cfg, source, trials=5)
    assert err.value.what == "2 trials in a row failed; the last one: the data is broken"
    assert study_states(tmp_path) == [("FAIL", "the data is broken"), ("FAIL", "the data is broken")]


def test_a_missing_metric_stops_the_search_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneforge.train.search import run_search

    def script(lr: float, report) -> None:
        report(1, {"loss": 1.0})

    cfg, source = scripted_search(
        tmp_path, monkeypatch, script, {"metric": "accuracy", "direction": "maximize"}
    )
    with pytest.raises(TuneforgeError) as err:
        run_search(cfg, source, trials=3)
    assert err.value.what == "validation has no metric 'accuracy' (it has ['loss'])"
    assert [s for s, _ in study_states(tmp_path)] == ["FAIL"]


def test_an_interrupted_trial_is_replaced_when_the_search_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from tuneforge.train.run import Interrupted
    from tuneforge.train.search import run_search

    calls = []

    def script(lr: float, report) -> None:
        calls.append(lr)
        if len(calls) == 2:
            raise Interrupted("stopped by SIGTERM after step 1")
        report(1, {"loss": lr})

    cfg, source = scripted_search(tmp_path, monkeypatch, script, {"prune": False})
    with pytest.raises(Interrupted):
        run_search(cfg, source, trials=2)
    assert study_states(tmp_path) == [("COMPLETE", None), ("FAIL", "interrupted")]

    # A search killed outright leaves its trial RUNNING; continuing marks it failed and runs a new one.
    storage = f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    optuna.load_study(study_name="tuneforge", storage=storage).ask()
    summary = run_search(cfg, source, trials=2)
    assert [s for s, _ in study_states(tmp_path)] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    assert len(calls) == 3
    assert summary.count("complete") == 2


def test_pruned_trials_stop_at_the_step_the_median_rule_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneforge.train.search import run_search

    steps_run: list[int] = []

    def script(lr: float, report) -> None:
        # The first trial improves 1.0 -> 0.5; the second is worse from its first validation on.
        for step, loss in enumerate([1.0, 0.5] if lr < 0.01 else [2.0, 1.5], 1):
            steps_run.append(step)
            report(step, {"loss": loss})

    tune = {
        "prune_startup_trials": 1,
        "start_with": [{"train.learning_rate": 0.001}, {"train.learning_rate": 0.1}],
    }
    cfg, source = scripted_search(tmp_path, monkeypatch, script, tune)
    summary = run_search(cfg, source, trials=2)
    assert [(t.state, t.value, t.intermediate) for t in summary.trials] == [
        ("complete", 0.5, {1: 1.0, 2: 0.5}),
        ("pruned", None, {1: 2.0}),
    ]
    assert steps_run == [1, 2, 1]


def test_a_trial_whose_process_on_this_machine_is_gone_is_rerun_with_its_values_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import subprocess
    import sys

    import optuna

    from tuneforge.train.search import run_search

    calls = []

    def script(lr: float, report) -> None:
        calls.append(lr)
        report(1, {"loss": lr})

    cfg, source = scripted_search(tmp_path, monkeypatch, script, {"prune": False})
    cfg.tune.heartbeat_s = 600  # far longer than the test: only the gone process id can tell
    run_search(cfg, source, trials=1)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    study = optuna.load_study(study_name="tuneforge", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    lost = study.ask({"train.learning_rate": optuna.distributions.FloatDistribution(1e-5, 1.0, log=True)})
    lost.set_user_attr("worker", f"{socket.gethostname()}:{gone.stdout.strip()}")
    summary = run_search(cfg, source, trials=2)
    assert [(t.state, t.params) for t in summary.trials[1:]] == [
        ("fail", lost.params),
        ("complete", lost.params),  # run again with the same values
    ]
    assert calls[1] == lost.params["train.learning_rate"]
    assert summary.trials[1].error == (
        "its process stopped before it ended (killed, or its machine lost); run again as trial 2"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("not a url", "Could not parse SQLAlchemy URL from given URL string"),
        (
            "postgresql+psycopg://tuner:secret@/db?host=/nonexistent-socket-dir",
            'connection to server on socket "/nonexistent-socket-dir/.s.PGSQL.5432" failed',
        ),
    ],
)
def test_a_study_database_that_cannot_be_opened_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    from tuneforge.train.search import run_search

    cfg, source = scripted_search(tmp_path, monkeypatch, lambda lr, report: None, {"storage": url})
    with pytest.raises(TuneforgeError) as err:
        run_search(cfg, source, trials=1)
    assert err.value.what.startswith("cannot open the study database ") and problem in err.value.what
    assert "secret" not in err.value.render()  # the password is never shown
    assert (
        err.value.where
        == f"{tmp_path / 'tune.yaml'}:{line_of(tmp_path / 'tune.yaml', 'storage:')} (tune.storage)"
    )
