"""Recommendation rules on synthetic dataset manifests; the written config loads and trains; defaults_for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneforge.config import config_from_dict
from tuneforge.models import recommend as rec
from tuneforge.models.catalog import catalog
from tuneforge.models.estimate import Device, parse_gpu

CPU = Device("test CPU", "cpu", 16 * 2**30, 5e10)


def manifest(fmt: str, rows: int, *, labels: int = 0, p99: int = 100) -> dict:
    lengths = {"count": rows, "total": rows * p99 // 2, "max": p99 + 10, "p90": p99 * 3 // 4, "p99": p99}
    return {
        "format": fmt,
        "labels": [f"label{i}" for i in range(labels)],
        "splits": {"train": rows, "validation": rows // 10, "test": rows // 10},
        "token_lengths": {"train": lengths},
    }


@pytest.fixture(autouse=True)
def small_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules, not the whole catalog, are under test: a few sizes keep each case to a few estimates."""
    keep = {"smollm2-135m", "qwen2.5-1.5b", "llama-3.1-8b", "minilm-l6", "deberta-v3-base"}
    monkeypatch.setattr(rec, "catalog", lambda: tuple(m for m in catalog() if m.name in keep))


def test_small_classification_set_gets_an_encoder_with_a_head() -> None:
    recs = rec.recommend("ds", manifest("classification", 800, labels=5), CPU)
    first = recs[0]
    assert (first.model, first.method) == ("builtin:minilm-l6", "full")
    assert first.config["model"]["task"] == "classification"
    assert first.config["train"]["learning_rate"] == 1e-4 and first.config["train"]["epochs"] == 10
    assert first.config["train"]["early_stopping_patience"] == 3
    assert first.config["model"]["max_length"] == 128  # p99 100 + [CLS]/[SEP], rounded up to 64
    assert "classification with 5 labels: an encoder with a head" in first.reasons[0]
    # the decoder alternative comes after, and costs far more per step
    assert recs[1].model == "builtin:smollm2-135m-instruct"
    ratio = recs[1].estimate.step_s / first.estimate.step_s
    assert ratio > 4, ratio
    assert (
        first.reasons[-1]
        == f"{ratio:.0f}x less compute per step than builtin:smollm2-135m-instruct with a head"
    )


def test_large_chat_set_on_a_big_gpu_gets_lora_on_a_larger_model() -> None:
    recs = rec.recommend("ds", manifest("chat", 200_000, p99=1000), parse_gpu("H100"))
    first = recs[0]
    assert (first.model, first.method) == ("meta-llama/Llama-3.1-8B-Instruct", "lora")
    assert first.config["method"]["r"] == 16 and first.config["train"]["learning_rate"] == 2e-4
    assert first.config["train"]["epochs"] == 1 and first.config["model"]["max_length"] == 1088
    assert first.estimate.peak <= 0.85 * parse_gpu("H100").memory
    assert any(r.method == "full" for r in recs)  # 200k examples: full fine-tuning of a small model listed


def test_small_gpu_gets_qlora_and_budget_cuts_epochs() -> None:
    recs = rec.recommend("ds", manifest("instruction", 5_000, p99=300), parse_gpu("16GB"))
    assert (recs[0].model, recs[0].method) == ("meta-llama/Llama-3.1-8B-Instruct", "qlora")
    assert any("QLoRA (4-bit base) is what makes 8.0B fit" in r for r in recs[0].reasons)
    assert "5,000 examples: LoRA, not full fine-tuning" in recs[0].reasons[0]
    hours = recs[0].hours
    budget = rec.recommend(
        "ds", manifest("instruction", 5_000, p99=300), parse_gpu("16GB"), budget_hours=hours / 2
    )
    assert budget[0].config["train"]["epochs"] < 3 or budget[0].model != recs[0].model


def test_written_config_loads_and_trains_on_a_tiny_model(tmp_path: Path, tiny_bert: Path, cli) -> None:
    from tests.tiny import sentiment_rows, write_csv

    data = write_csv(tmp_path / "data.csv", sentiment_rows(60))
    prep = {"data": {"path": str(data), "format": "classification", "output_dir": str(tmp_path / "ds")}}
    (tmp_path / "prep.yaml").write_text(yaml.safe_dump({**prep, "model": {"name": str(tiny_bert)}}))
    assert cli("prepare", str(tmp_path / "prep.yaml")).returncode == 0
    done = cli("recommend", str(tmp_path / "ds"), "--device", "cpu", "--out", str(tmp_path / "rec"))
    assert done.returncode == 0, done.stderr
    written = sorted((tmp_path / "rec").glob("*.yaml"))
    assert written[0].name == "1-minilm-l6-full.yaml"
    raw = yaml.safe_load(written[0].read_text())
    cfg = config_from_dict(raw)
    assert cfg.data.path == str(tmp_path / "ds") and cfg.model.task == "classification"
    run = tmp_path / "run"
    trained = cli(
        "train", str(written[0]), f"model.name={tiny_bert}", "train.max_steps=2", f"train.output_dir={run}",
        "train.progress=false",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert (run / "final" / "model.safetensors").is_file()


MINILM = {"model": {"name": "builtin:minilm-l6", "task": "classification"}}
GIVEN = {"model.name", "model.task", "data.path"}


def test_defaults_for_encoder_classification_by_dataset_size() -> None:
    """A trained head: full fine-tuning, epochs by size, validation once an epoch, early stopping."""
    cfg = config_from_dict(MINILM)
    chosen = rec.defaults_for(cfg, manifest("classification", 1_500, labels=4), GIVEN)
    assert chosen == {
        "method.name": "full",
        "train.epochs": 5,
        "train.learning_rate": 1e-4,  # a small encoder (22M parameters)
        "train.warmup_ratio": 0.06,
        "train.weight_decay": 0.01,
        "train.eval_every": 188,  # 1,500 rows / batch 8: once an epoch
        "train.early_stopping_patience": 3,
        "train.metric_for_best": "accuracy",
        "model.max_length": 128,  # p99 100 + [CLS]/[SEP], rounded up to 64
    }
    tiny = rec.defaults_for(cfg, manifest("classification", 120, labels=3, p99=40), GIVEN)
    assert (tiny["train.epochs"], tiny["train.eval_every"], tiny["model.max_length"]) == (10, 15, 64)
    # 50,000 rows on a CPU: method head (the encoder frozen, each text embedded once), full on a GPU
    large = rec.defaults_for(cfg, manifest("classification", 50_000, labels=2), GIVEN)
    assert large == {"method.name": "head", "model.max_length": 128}
    # documents (p90 over 256 tokens) on a CPU: head at any size, read in windows of at most 512 tokens
    docs_manifest = manifest("classification", 1_449, labels=5, p99=2_000)
    docs = rec.defaults_for(cfg, docs_manifest, GIVEN)
    assert docs == {"method.name": "head"}  # max_length 512 is model.max_length's own default
    assert rec.describe_defaults(cfg, docs_manifest, docs).splitlines()[1] == (
        "  why method head: documents (1,500 tokens at the 90th percentile) on a CPU: method head (the "
        "encoder frozen, each text embedded once, long ones in windows, then a linear head fitted in "
        "seconds), strong on topic-like labels; set method.name=full or lora to fine-tune the encoder "
        "(hours here)"
    )
    on_gpu = rec.defaults_for(cfg, manifest("classification", 50_000, labels=2), GIVEN, cuda=True)
    assert on_gpu["method.name"] == "full" and "method.r" not in on_gpu
    # no validation split: neither early stopping nor a best-by-accuracy checkpoint to stop on
    no_val = manifest("classification", 1_500, labels=4)
    no_val["splits"]["validation"] = 0
    assert not {"train.early_stopping_patience", "train.eval_every"} & set(
        rec.defaults_for(cfg, no_val, GIVEN)
    )


def test_defaults_for_decoders() -> None:
    """A decoder with a head keeps LoRA (r=8, lr 5e-4); a causal LM gets epochs and length by size."""
    head = config_from_dict({"model": {"name": "builtin:smollm2-135m-instruct", "task": "classification"}})
    chosen = rec.defaults_for(head, manifest("classification", 800, labels=5), GIVEN)
    assert "method.name" not in chosen
    assert (chosen["method.r"], chosen["method.alpha"], chosen["train.learning_rate"]) == (8, 16, 5e-4)
    assert chosen["train.epochs"] == 10 and chosen["train.metric_for_best"] == "accuracy"
    lm = config_from_dict({"model": {"name": "builtin:smollm2-135m-instruct"}})
    # lr 2e-4 and r=16 are the fields' own defaults already: only what changes is listed
    assert rec.defaults_for(lm, manifest("chat", 5_000, p99=300), {"data.path"}) == {
        "train.epochs": 3,
        "model.max_length": 384,  # p99 300 + the chat template, rounded up to 64
    }
    assert "train.epochs" not in rec.defaults_for(lm, manifest("chat", 500_000), {"data.path"})  # 1: as is
    # packed text fills model.max_length whatever the documents' lengths: no length default
    assert "model.max_length" not in rec.defaults_for(lm, manifest("text", 5_000), {"data.path"})


def test_defaults_for_a_local_model_outside_the_catalog_size_it_from_its_config(tmp_path: Path) -> None:
    """Only config.json (no weights): a BERT-large shape is 335M parameters, so the rate for large encoders
    (not the small-encoder 1e-4), and its 512-position context caps the length default."""
    from transformers import BertConfig

    big = tmp_path / "bert-large-like"
    BertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ).save_pretrained(big)
    cfg = config_from_dict({"model": {"name": str(big), "task": "classification"}})
    # on a GPU (on a CPU documents this long get method head, which has no learning rate)
    chosen = rec.defaults_for(cfg, manifest("classification", 1_500, labels=4, p99=900), GIVEN, cuda=True)
    assert chosen["train.learning_rate"] == 5e-5
    assert chosen.get("model.max_length", cfg.model.max_length) == 512  # not 960: the context is 512
    small = tmp_path / "bert-small-like"
    BertConfig(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024
    ).save_pretrained(small)
    cfg = config_from_dict({"model": {"name": str(small), "task": "classification"}})
    assert (
        rec.defaults_for(cfg, manifest("classification", 1_500, labels=4), GIVEN)["train.learning_rate"]
        == 1e-4
    )
    # not sizeable offline (no such folder, no hub): the cautious rate of a large model
    cfg = config_from_dict({"model": {"name": str(tmp_path / "missing"), "task": "classification"}})
    assert rec._size_from_config(cfg) == (int(1e9), 4096)


def test_defaults_never_touch_keys_the_user_set(tmp_path: Path) -> None:
    from tuneforge.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text(
        "data: {path: ds}\nmodel: {name: 'builtin:minilm-l6', task: classification}\n"
        "train: {learning_rate: 1.0e-4, batch_size: 16}\n"
    )
    m = manifest("classification", 1_500, labels=4)
    cfg, source = load_config(path, ["train.epochs=2", "method.name=lora"])
    assert source.given == {
        "data.path", "model.name", "model.task", "train.learning_rate", "train.batch_size", "train.epochs",
        "method.name",
    }  # fmt: skip
    chosen = rec.defaults_for(cfg, m, source.given)
    assert not {"train.learning_rate", "train.epochs", "method.name", "train.batch_size"} & set(chosen)
    assert chosen["method.r"] == 8 and chosen["train.eval_every"] == 94  # 1,500 rows / batch 16
    applied = rec.apply_settings(cfg, chosen)
    assert (applied.train.learning_rate, applied.train.epochs, applied.method.name) == (1e-4, 2, "lora")
    # options of the user's own make the method theirs: no r or alpha on top
    cfg, source = load_config(path, ["method.name=ia3", "method.target_modules=[query]"])
    assert not any(k.startswith("method.") for k in rec.defaults_for(cfg, m, source.given))
    # train.max_steps given: epochs would not count, so none is chosen
    cfg, source = load_config(path, ["train.max_steps=10"])
    assert "train.epochs" not in rec.defaults_for(cfg, m, source.given)


def test_describe_defaults_names_every_key_to_override() -> None:
    cfg = config_from_dict(MINILM)
    m = manifest("classification", 1_500, labels=4)
    chosen = {"method.name": "full", "train.learning_rate": 5e-5, "train.epochs": 5}
    assert rec.describe_defaults(cfg, m, chosen) == (
        "defaults for encoder classification, 1,500 examples: method.name=full, train.learning_rate=5e-05, "
        "train.epochs=5 (set any of these keys to override)"
    )
    lm = config_from_dict({"model": {"name": "builtin:smollm2-135m-instruct"}})
    assert rec.describe_defaults(lm, manifest("chat", 20_000), {"train.epochs": 2}).startswith(
        "defaults for causal LM, 20,000 examples: train.epochs=2 ("
    )


def test_recommend_writes_the_defaults_recipe() -> None:
    """recommend and defaults_for share one rule book: a recommended config holds the same settings."""
    m = manifest("classification", 800, labels=5)
    first = rec.recommend("ds", m, CPU)[0]
    cfg = config_from_dict({**MINILM, "method": {"name": first.method}})
    chosen = rec.defaults_for(cfg, m, GIVEN | {"method.name"})
    written = first.config
    for key, value in chosen.items():
        section, name = key.split(".", 1)
        if key == "train.eval_every":  # steps per epoch follow the recommended batch (effective 16)
            continue
        assert written[section][name] == value, key


def fake_recs() -> list[rec.Recommendation]:
    config = {"model": {"name": "builtin:minilm-l6"}, "train": {"epochs": 3}}
    return [rec.Recommendation("builtin:minilm-l6", "full", config, estimate=None)]  # type: ignore[arg-type]


def test_out_folder_follows_prepares_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneforge.errors import TuneforgeError

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "rec"
    [written] = rec.write_configs(out, fake_recs())
    assert written == out / "1-minilm-l6-full.yaml"
    assert yaml.safe_load(written.read_text())["train"] == {"epochs": 3}
    rec.write_configs(out, fake_recs())  # its own earlier output is replaced
    written.write_text("# tuned by hand\n" + written.read_text())
    with pytest.raises(TuneforgeError) as err:
        rec.write_configs(out, fake_recs())
    assert err.value.render().startswith(
        f"--out: {out} holds configs edited since `recommend` wrote them (1-minilm-l6-full.yaml)"
    )
    assert written.read_text().startswith("# tuned by hand")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(TuneforgeError, match=r"is not a tuneforge\.recommended folder made by tuneforge"):
        rec.write_configs(mine, fake_recs())
    for where in (Path("/"), tmp_path, Path(".")):
        with pytest.raises(TuneforgeError, match="is the current folder or one above it"):
            rec.write_configs(where, fake_recs())
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_recommend_refuses_nonsense_before_any_work(tmp_path: Path, cli) -> None:
    nowhere = str(tmp_path / "no-dataset")
    root = cli("recommend", nowhere, "--device", "cpu", "--out", "/")
    assert root.returncode == 2 and "/ is the current folder or one above it" in root.stderr
    hours = cli("recommend", nowhere, "--budget-hours", "-1")
    assert hours.returncode == 2
    assert hours.stderr.startswith("error: --budget-hours: -1 hours is not a training time"), hours.stderr
    gpu = cli("recommend", nowhere, "--gpu", "0GB")
    assert gpu.returncode == 2 and gpu.stderr.startswith("error: --gpu: a GPU of '0GB' has no memory"), (
        gpu.stderr
    )


def test_a_roomy_cpu_machine_gets_the_builtin_first_and_the_next_small_model_from_the_hub(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keep = {"smollm2-135m", "smollm2-360m", "qwen2.5-1.5b"}
    monkeypatch.setattr(rec, "catalog", lambda: tuple(m for m in catalog() if m.name in keep))
    roomy = Device("21 GiB CPU", "cpu", 21 * 2**30, 5e10)
    recs = rec.recommend("ds", manifest("chat", 2_000, p99=300), roomy)
    assert [(r.model, r.method) for r in recs] == [
        ("builtin:smollm2-135m-instruct", "lora"),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", "lora"),  # 1.5B is past what a CPU step allows
    ]
    assert "built in: trains offline, and small enough for a CPU" in recs[0].reasons
    assert (
        "not built in: HuggingFaceTB/SmolLM2-360M-Instruct downloads from the Hugging Face Hub on first use"
        in recs[1].reasons
    )


def test_each_model_is_sized_with_the_lengths_it_sees_and_read_as_blocks_at_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dataset prepared for SmolLM2 (chat rendering, system prompt) recommends MiniLM with a window fitted
    to the bare texts in MiniLM's tokens (it once took SmolLM2's chat lengths: a 128 window, 2.5x the
    time); recommendations print as blocks, each line within 80 columns (a table folded the reasons a word a
    line)."""
    import io

    from rich.console import Console

    from tests.tiny import sentiment_rows, write_csv
    from tuneforge import cli
    from tuneforge.config import DataConfig, ModelConfig
    from tuneforge.data import prepare_dataset

    monkeypatch.chdir(tmp_path)
    data = write_csv(tmp_path / "data.csv", sentiment_rows(60))
    cfg = DataConfig(path=str(data), format="classification", output_dir="ds")
    ds = prepare_dataset(cfg, model=ModelConfig(name="builtin:smollm2-135m-instruct"))
    monkeypatch.setattr(rec, "SMALL_DATA", 10)  # method head on a CPU, as from 10,000 examples
    screen = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(width=80, file=screen, color_system=None))
    cli.recommend(Path("ds"), gpu=None, device="cpu", budget_hours=None, commercial=False, out=Path("rec"))

    head = yaml.safe_load((tmp_path / "rec" / "1-minilm-l6-head.yaml").read_text())
    as_prepared = rec.max_length_for(ds.manifest, "classification", 512)
    assert head["model"]["max_length"] == 64 < as_prepared
    lines = screen.getvalue().splitlines()
    assert all(len(line) <= 80 and line == line.rstrip() for line in lines), lines
    assert lines[0] == "recommended for ds on CPU, best first:"
    assert lines[1].startswith("1. builtin:minilm-l6 + head: peak ")
    assert (
        lines[2] == "   settings: frozen encoder, linear head; embed batch 32, window 64"
    )  # method.batch_size
    assert "   config: rec/1-minilm-l6-head.yaml" in lines
    assert lines[-1] == "train one with: tuneforge train rec/1-....yaml"
