"""`tuneforge serve RUN serve.port=8123`: key=value overrides after the targets, as after train/evaluate."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge import cli
from tuneforge.errors import TuneforgeError


def test_overrides_after_the_targets_are_split_from_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    args = ["runs/a", "serve.port=8123", "registry:champ", "builtin:minilm-l6", "serve.log_db=null"]
    assert cli.split_serve_args(args) == (
        ["runs/a", "registry:champ", "builtin:minilm-l6"],
        ["serve.port=8123", "serve.log_db=null"],
    )


def test_a_run_directory_that_looks_like_an_override_stays_a_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "serve.port=1").mkdir()
    assert cli.split_serve_args(["serve.port=1", "serve.port=2"]) == (["serve.port=1"], ["serve.port=2"])


def test_positional_overrides_reach_the_serve_config_beside_set() -> None:
    _, given = cli.split_serve_args(["runs/a", "serve.port=8123"])
    cfg = cli._serve_config(None, [*given, "serve.host=0.0.0.0"])
    assert (cfg.port, cfg.host) == (8123, "0.0.0.0")


def test_an_override_of_another_section_is_refused_with_what_to_do() -> None:
    _, given = cli.split_serve_args(["runs/a", "train.max_steps=3"])
    with pytest.raises(TuneforgeError) as err:
        cli._serve_config(None, given)
    assert str(err.value) == (
        "tuneforge serve: train.max_steps=3 is not a serve option\n"
        "  fix: give serve.KEY=VALUE (after the targets, or with --set); see `tuneforge config-keys`"
    )
