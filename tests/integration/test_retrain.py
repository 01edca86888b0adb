"""`tuneforge retrain` on the tiny BERT: a challenger replaces the champion only when it is better.

One module fixture trains the lifecycle once: a champion trained for one step (version 1), a challenger
trained properly on its data plus new rows (version 2: promoted), then a challenger whose new rows carry
shuffled labels (version 3: worse, kept out). The tests read that history from different sides.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.tiny import LABELS, WORDS, write_jsonl
from tuneforge.config import config_from_dict
from tuneforge.data.dedup import normalize_for_matching
from tuneforge.errors import TuneforgeError
from tuneforge.registry import Registry


def rows(n: int, seed: int, start: int) -> list[dict[str, str]]:
    """Keyword-labelled texts, numbered from `start` so that two calls never share a text."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        label = LABELS[i % 3]
        words = rng.sample(WORDS[label], 2) + rng.sample(WORDS["neutral"], 1)
        # Long enough that one added word leaves a near duplicate (3-word shingles, Jaccard 0.8).
        text = f"{words[0]} {words[1]} {words[2]} item {i} came in the post on a rainy monday morning"
        out.append({"text": text, "label": label})
    return out


def config(
    root: Path, model: Path, *, path: str | None = None, steps: int = 30, **retrain: Any
) -> dict[str, Any]:
    return {
        "data": {"path": path, "output_dir": str(root / "champion.ds"), "dedup": "exact"},
        "model": {"name": str(model), "task": "classification", "max_length": 24},
        "method": {"name": "full"},
        "train": {
            "output_dir": str(root / "runs"),
            "max_steps": steps,
            "batch_size": 16,
            "learning_rate": 3e-3,
            "warmup_ratio": 0.0,
            "eval_every": 0,
            "save_every": 0,
            "progress": False,
        },
        "eval": {"bootstrap": 100, "batch_size": 64},
        "retrain": retrain,
    }


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> dict[str, Any]:
    from tuneforge.retrain import retrain
    from tuneforge.train import train

    root = tmp_path_factory.mktemp("retrain")
    champion_data = write_jsonl(root / "champion.jsonl", rows(240, seed=0, start=0))
    cfg = config(root, tiny_bert, path=str(champion_data), steps=1)
    cfg["train"]["output_dir"] = str(root / "champion.run")
    champion = train(config_from_dict(cfg)).path
    reg = Registry.at(root / "registry", "sentiment")
    reg.register(champion, "first")
    reg.promote(1, "first")
    test_rows = [json.loads(line) for line in (root / "champion.ds" / "test.jsonl").read_text().splitlines()]

    # New rows, and copies of five test rows (one with another word): the leakage check must keep them out.
    new = rows(120, seed=1, start=1000)
    leaked = [dict(r) for r in test_rows[:5]]
    leaked[0]["text"] += " today"
    # They arrive as live corrections: a `feedback export` folder, its rows split into train and held-out.
    export = root / "feedback"
    export.mkdir()
    write_jsonl(export / "classify.jsonl", new + leaked)
    manifest = {"kind": "tuneforge.feedback-export", "files": {"classify.jsonl": len(new + leaked)}}
    (export / "export.json").write_text(json.dumps(manifest))
    better_cfg = config(root, tiny_bert, data=[str(export)], live_holdout=0.3)
    (root / "better.yaml").write_text(json.dumps(better_cfg))
    better = retrain(reg, config_from_dict(better_cfg))

    # Shuffled labels: each class renamed as another, in three times as many rows as the right ones.
    shuffle = dict(zip(LABELS, LABELS[1:] + LABELS[:1], strict=True))
    shuffled = [{**r, "label": shuffle[r["label"]]} for r in rows(720, seed=2, start=5000)]
    write_jsonl(root / "shuffled.jsonl", shuffled)
    worse = retrain(reg, config_from_dict(config(root, tiny_bert, data=[str(root / "shuffled.jsonl")])))
    return {"root": root, "reg": reg, "better": better, "worse": worse, "test_rows": test_rows}


def test_a_better_challenger_replaces_the_champion(lifecycle: dict[str, Any]) -> None:
    out, reg = lifecycle["better"], lifecycle["reg"]
    d = out.decision
    assert (out.version, d.promote, d.metric) == (2, True, "accuracy")
    assert d.challenger > d.champion and d.test["p_value"] < 0.05
    assert d.reason.startswith("the challenger is better: accuracy ")
    report = json.loads((out.run.path / "retrain.json").read_text())
    assert report["champion"]["version"] == 1 and report["challenger"]["version"] == 2
    assert report["evaluation"]["champion"]["accuracy"] == d.champion
    assert report["evaluation"]["n"] == len(lifecycle["test_rows"])
    assert report["frozen_test"]["kept_in_new_dataset"] is True
    # The live held-out part: 30% of the 125 corrections, 12 of each label once two copies of frozen test
    # rows merged into them; both models on it with the same paired test, the challenger better there too.
    assert report["live"]["held_out_as_read"] == 38 and report["evaluation"]["live"]["n"] == 36
    live = d.live
    assert live is not None and (live["judged"], live["n"], live["blocks"]) == (True, 36, False)
    assert (live["champion"], live["p_value"]) == (pytest.approx(1 / 3), 0.01)
    assert live["challenger"] == report["evaluation"]["live"]["challenger"]["accuracy"] > 0.9
    assert live["verdict"].startswith("challenger is better in accuracy by ")
    held = [json.loads(x) for x in (Path(report["dataset"]["path"]) / "test.jsonl").read_text().splitlines()]
    held = [r for r in held if r not in lifecycle["test_rows"]]
    assert sorted(Counter(r["label"] for r in held).values()) == [12, 12, 12]
    md = (out.run.path / "retrain.md").read_text()
    assert md.startswith("# Retrain of sentiment: challenger promoted\n")
    assert f"**Decision:** {d.reason}." in md
    assert "(252 train, 36 validation, 72 test). Deduplication removed 4 exact and 0 near duplicates" in md
    assert "held out (seeded, stratified by label) and kept in the test split: 36 examples" in md
    assert f"Live test: {live['verdict']}." in md
    assert reg.version(2)["retrain"]["promoted"] is True
    assert reg.version(2)["retrain"]["live"]["verdict"] == live["verdict"]
    assert reg.version(2)["eval"]["test"]["accuracy"] == d.challenger


def test_a_worse_challenger_is_registered_and_not_promoted(lifecycle: dict[str, Any]) -> None:
    out, reg = lifecycle["worse"], lifecycle["reg"]
    d = out.decision
    assert (out.version, d.promote) == (3, False)
    assert d.challenger < d.champion
    assert d.reason.startswith("the challenger is not better: accuracy ")
    assert reg.champion()["version"] == 2  # type: ignore[index]
    assert (
        (out.run.path / "retrain.md")
        .read_text()
        .startswith("# Retrain of sentiment: challenger not promoted\n")
    )
    # Every decision is in the history, the reasons with the numbers.
    history = [(h["action"], h["version"]) for h in reg.history()]
    assert history == [
        ("register", 1),
        ("promote", 1),
        ("register", 2),
        ("retrain", 2),
        ("promote", 2),
        ("register", 3),
        ("retrain", 3),
    ]
    last = reg.history()[-1]
    assert (last["promoted"], last["champion"], last["metric"]) == (False, 2, "accuracy")
    assert last["reason"] == d.reason


def test_the_frozen_test_split_never_enters_the_challengers_training(lifecycle: dict[str, Any]) -> None:
    out = lifecycle["better"]
    report = json.loads((out.run.path / "retrain.json").read_text())
    dataset = Path(report["dataset"]["path"])

    def texts(split: str) -> set[str]:
        lines = (dataset / f"{split}.jsonl").read_text().splitlines()
        return {normalize_for_matching(json.loads(line)["text"]) for line in lines}

    test = {normalize_for_matching(r["text"]) for r in lifecycle["test_rows"]}
    assert texts("test") >= test  # and the live held-out rows (below)
    assert not (texts("train") | texts("validation")) & test
    counts = report["dataset"]["counts"]
    # four exact copies lose to their test row in deduplication; the edited one is caught as leakage
    assert (counts["exact_duplicates"], counts["leakage_dropped"]) == (4, 1)
    # every champion training row and every new row not held out (less the copies) is trained on
    export = str(lifecycle["root"] / "feedback")
    assert report["sources"] == [
        {"name": "champion v1", "split": "train", "rows": 168},
        {"name": "champion v1", "split": "validation", "rows": 36},
        {"name": "champion v1", "split": "test", "rows": 36},
        {"name": export, "split": "train", "rows": 87},
        {"name": export, "split": "live held-out (test)", "rows": 38},
    ]
    # 87 trained on: less two exact copies and the edited copy of test rows; 38 held out: less two copies
    assert report["dataset"]["splits"] == {"train": 168 + 84, "validation": 36, "test": 36 + 36}
    # held-out rows are test rows to prepare: no training row is equal or near to one either
    held = texts("test") - test
    assert len(held) == 36 and not (texts("train") | texts("validation")) & held


def test_new_data_that_would_change_the_frozen_test_split_is_refused_before_training(
    lifecycle: dict[str, Any], tiny_bert: Path
) -> None:
    from tuneforge.retrain import retrain

    reg, root = lifecycle["reg"], lifecycle["root"]
    versions = reg.versions()
    # The frozen test split of champion v2 is v1's and its live held-out rows; a new row gives one of v1's
    # test texts another label.
    test_row = lifecycle["test_rows"][0]
    other = next(x for x in LABELS if x != test_row["label"])
    write_jsonl(root / "conflict.jsonl", [*rows(30, seed=4, start=9000), {**test_row, "label": other}])
    cfg = config(root, tiny_bert, data=[str(root / "conflict.jsonl")])
    with pytest.raises(TuneforgeError) as err:
        retrain(reg, config_from_dict(cfg))
    assert err.value.what == (
        "preparing the new data changed the champion's frozen test split (1 of its 72 rows lost, "
        "0 changed or added): champion and challenger would not be tested on the same rows"
    )
    assert "data.label_conflicts: keep" in (err.value.fix or "")
    assert reg.versions() == versions


def test_dry_run_prints_the_sources_and_writes_nothing(lifecycle: dict[str, Any]) -> None:
    root = lifecycle["root"]
    before = sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))
    r = run_cli(
        "retrain", "better.yaml", "--registry", "sentiment", "--root", "registry", "--dry-run", cwd=root
    )
    assert r.returncode == 0, r.stderr
    fingerprint = json.loads((lifecycle["worse"].run.path / "retrain.json").read_text())["frozen_test"]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("champion: sentiment version 2 (")
    assert lines[1:6] == [
        "  champion v2  train: 252 rows",
        "  champion v2  validation: 36 rows",
        "  champion v2  test: 72 rows",
        f"  {root / 'feedback'}  train: 87 rows",
        f"  {root / 'feedback'}  live held-out (test): 38 rows",
    ]
    assert f"(fingerprint {fingerprint['fingerprint'][:16]})" in lines[6]
    assert sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*")) == before


def test_a_second_retrain_at_once_is_refused(lifecycle: dict[str, Any]) -> None:
    from tuneforge.retrain import retrain

    reg, root = lifecycle["reg"], lifecycle["root"]
    versions = reg.versions()
    with reg.locked("a retrain"), pytest.raises(TuneforgeError) as err:
        retrain(reg, config_from_dict(config(root, Path("unused"))))
    assert err.value.what.startswith(
        "registry 'sentiment' is being changed by another tuneforge process (a retrain, pid "
    )
    assert reg.versions() == versions


def test_a_retrain_killed_half_way_leaves_the_champion_and_registers_nothing(
    lifecycle: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tiny_bert: Path
) -> None:
    import tuneforge.retrain.run as retrain_run

    reg, root = lifecycle["reg"], lifecycle["root"]
    history, pointer = reg.history(), reg.pointer.read_bytes()

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # after the challenger was trained and evaluated, before its report

    monkeypatch.setattr(retrain_run, "write_report", killed)
    cfg = config(root, tiny_bert, data=[str(root / "feedback")], steps=2)
    with pytest.raises(KeyboardInterrupt):
        retrain_run.retrain(reg, config_from_dict(cfg))
    assert (root / "runs" / "sentiment-v4" / "run" / "final").is_dir()  # it did get that far
    assert [v["version"] for v in reg.versions()] == [1, 2, 3]
    assert reg.history() == history and reg.pointer.read_bytes() == pointer
    # The next retrain (the command, this time) takes the same version number and starts that folder over.
    (root / "again.yaml").write_text(json.dumps(cfg))
    r = run_cli("retrain", "again.yaml", "--registry", "sentiment", cwd=root)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    report = json.loads((root / "runs" / "sentiment-v4" / "run" / "retrain.json").read_text())
    assert lines == [
        "sentiment: registered, not promoted: version 4",
        f"decision: {report['decision']['reason']}",
        f"  {report['decision']['test']['verdict']}",
        # The same export, split the same way: its held-out rows are already in champion v2's test split.
        "live held-out (0 examples): not enough data (n = 0, need ≥ 30)",
        f"report: {root / 'runs' / 'sentiment-v4' / 'run' / 'retrain.md'}",
    ]
    md = (root / "runs" / "sentiment-v4" / "run" / "retrain.md").read_text()
    assert "Live comparison: not enough data (n = 0, need ≥ 30); the frozen test split alone decides." in md
    assert lines[1].startswith("decision: the challenger is not better: accuracy ")
    assert reg.champion()["version"] == 2  # type: ignore[index]
