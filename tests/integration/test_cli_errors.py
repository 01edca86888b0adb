"""User mistakes end in one clear message (what, where, how to fix), exit code 2, no traceback, no output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import sentiment_rows, write_csv


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_csv(tmp_path / "data.csv", sentiment_rows(60))
    return tmp_path


def config(project: Path, model: str, extra: str = "") -> Path:
    p = project / "run.yaml"
    p.write_text(
        f"data:\n  path: data.csv\n  output_dir: ds\nmodel:\n  name: {model}\n{extra}"
        "train:\n  output_dir: run\n  max_steps: 2\n  progress: false\n"
    )
    return p


def assert_user_error(r: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.lstrip().startswith("error:")
    for f in fragments:
        assert f in r.stderr, r.stderr


def test_unknown_key(project: Path, cli) -> None:
    p = config(project, "builtin:smollm2-135m-instruct", "  colour: blue\n")
    assert_user_error(cli("train", "run.yaml"), f"{p.name}:6 (model.colour): unknown key 'model.colour'")
    assert not (project / "run").exists()


def test_wrong_type(project: Path, cli) -> None:
    config(project, "builtin:smollm2-135m-instruct")
    r = cli("train", "run.yaml", "train.max_steps=lots")
    assert_user_error(r, "command-line override train.max_steps", "'lots'")


def test_missing_data_file(project: Path, cli) -> None:
    config(project, "builtin:smollm2-135m-instruct")
    r = cli("prepare", "run.yaml", "data.path=nope.csv")
    assert_user_error(r, "nope.csv does not exist")
    assert not (project / "ds").exists()


def test_unknown_method_names_the_line(project: Path, cli, tiny_llama: Path) -> None:
    config(project, str(tiny_llama), "method:\n  name: lorax\n")
    assert_user_error(cli("train", "run.yaml"), "run.yaml:7 (method.name): unknown method 'lorax'", "fix:")
    assert not (project / "run").exists()


def test_offline_hub_id_says_to_pass_a_local_folder(project: Path, cli) -> None:
    config(project, "some-org/some-model-that-is-not-here")
    r = cli("train", "run.yaml", env={"HF_HUB_OFFLINE": "1"})
    assert_user_error(
        r,
        "could not load 'some-org/some-model-that-is-not-here' from the Hugging Face hub",
        "pass its local folder",
    )
    assert not (project / "run").exists()


def test_pickle_weights_are_refused_unless_allowed(project: Path, cli, tiny_llama: Path) -> None:
    import torch
    from safetensors.torch import load_file

    folder = project / "pickled"
    shutil.copytree(tiny_llama, folder)
    weights = folder / "model.safetensors"
    torch.save(load_file(str(weights)), folder / "pytorch_model.bin")
    weights.unlink()
    config(project, "./pickled")
    assert_user_error(
        cli("train", "run.yaml"), "holds only pickle weights (pytorch_model.bin)", "model.allow_pickle=true"
    )
    assert not (project / "run").exists()
    r = cli("train", "run.yaml", "model.allow_pickle=true")
    assert r.returncode == 0, r.stderr


def test_help_does_not_import_torch(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tuneforge", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0
    assert "prepare" in r.stdout and "quickstart" in r.stdout
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "tuneforge.cli" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "transformers")}


def test_fsdp_in_one_process_says_how_to_launch(project: Path, cli, tiny_llama: Path) -> None:
    config(project, str(tiny_llama))
    r = cli("train", "run.yaml", "train.fsdp=true")
    assert_user_error(
        r,
        "command-line override train.fsdp",
        "train.fsdp shards the model over several processes, and this run has one",
        "configs/accelerate/multi-gpu.yaml",
    )
    assert not (project / "run").exists()


def test_a_yaml_bomb_is_one_error(project: Path, cli) -> None:
    levels = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    (project / "bomb.yaml").write_text("tune:\n  start_with: [{" + ", ".join(levels) + "}]\n")
    assert_user_error(cli("train", "bomb.yaml"), "the YAML expands to more than 100,000 values")


def test_a_damaged_weights_file_is_one_error(project: Path, cli, tiny_llama: Path) -> None:
    folder = project / "damaged"
    shutil.copytree(tiny_llama, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    config(project, "./damaged")
    assert_user_error(
        cli("train", "run.yaml"),
        "the weights of the model are damaged: model.safetensors is not a readable safetensors file "
        "(incomplete metadata, file not fully covered)",
    )
    assert not (project / "run").exists()


def test_infinite_learning_rate_is_refused(project: Path, cli, tiny_llama: Path) -> None:
    config(project, str(tiny_llama))
    r = cli("train", "run.yaml", "train.learning_rate=.inf")
    assert_user_error(r, "command-line override train.learning_rate", "finite number")
    assert not (project / "run").exists()


def test_overwrite_refuses_a_folder_tuneforge_did_not_make(project: Path, cli, tiny_llama: Path) -> None:
    config(project, str(tiny_llama))
    (project / "run").mkdir()
    (project / "run" / "config.yaml").write_text("not ours\n")
    r = cli("train", "run.yaml", "--overwrite")
    assert_user_error(r, "is not a tuneforge run directory", "refusing to delete it")
    assert "trainable parameters" not in r.stderr  # refused before the model was loaded
    assert (project / "run" / "config.yaml").read_text() == "not ours\n"


def test_evaluate_split_is_not_a_path(project: Path, cli, tiny_llama: Path) -> None:
    from tuneforge.config import config_from_dict

    run = project / "run"
    run.mkdir()
    raw = {"data": {"path": "data.csv"}, "model": {"name": str(tiny_llama)}, "train": {"output_dir": "run"}}
    (run / "config.yaml").write_text(config_from_dict(raw).to_yaml())
    r = cli("evaluate", "run", "--split", "../../x")
    assert_user_error(r, "--split: unknown split '../../x'", "fix: use one of: train, validation, test")
    assert not (run / "eval").exists()


def test_a_time_budget_that_is_no_duration(project: Path, cli) -> None:
    config(project, "builtin:smollm2-135m-instruct")
    assert_user_error(
        cli("train", "run.yaml", "--time-budget", "soon"),
        "train.time_budget: a duration is a number of seconds or e.g. 90s, 30m, 1h30m, 2h (got 'soon')",
    )
    assert not (project / "ds").exists() and not (project / "run").exists()
