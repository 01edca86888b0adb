"""`tuneforge train → evaluate → report → human-eval export/import → DPO train → evaluate` end to end on the
tiny Llama.

Every number checked here is recomputed from the rows of predictions.jsonl (or the key), not read back.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.integration.eval_invariants import check_numbers
from tests.tiny import sentiment_rows, write_csv

CONFIG = """\
data: {{path: data.csv, output_dir: ds, group_column: region}}
model: {{name: {model}, task: causal-lm, max_length: 320}}
method: {{name: lora, r: 4}}
train: {{output_dir: run, max_steps: 4, batch_size: 4, learning_rate: 1.0e-2, eval_every: 0, save_every: 0,
        progress: false}}
eval: {{max_examples: 12, bootstrap: 200, min_group_size: 4, decision: generate, max_new_tokens: 4}}
"""


# Preference tuning of the same base on the pairs the raters decided (DPO).
DPO_CONFIG = """\
data: {{path: {prefs}}}
model: {{name: {model}, max_length: 128}}
method: {{name: lora, r: 4}}
train: {{output_dir: dpo, max_steps: 3, batch_size: 2, learning_rate: 1.0e-2, dpo_beta: 0.1, eval_every: 0,
        save_every: 0, progress: false}}
"""


@pytest.fixture
def project(tmp_path: Path, tiny_llama: Path) -> Path:
    rows = sentiment_rows(90)
    for i, r in enumerate(rows):
        r["region"] = "north" if i % 3 else "south"
    write_csv(tmp_path / "data.csv", rows)
    (tmp_path / "run.yaml").write_text(CONFIG.format(model=tiny_llama))
    return tmp_path


def test_train_evaluate_report_human_eval(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("train", "run.yaml").returncode == 0
    r = cli("evaluate", "run", "--compare-base")
    assert r.returncode == 0, r.stderr
    run = project / "run"
    result = json.loads((run / "eval" / "test.json").read_text())
    rows = [json.loads(line) for line in (run / "eval" / "test.predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12

    # decision=generate: each answer parsed into a label; the rate of answers naming none is reported
    from tuneforge.evaluation.model_eval import parse_label

    labels = result["labels"]
    parsed = [parse_label(row["tuned"], labels) for row in rows]
    assert result["tuned"]["unparseable_rate"] == pytest.approx(sum(p is None for p in parsed) / 12)
    correct = [float(p == row["label"]) for p, row in zip(parsed, rows, strict=True)]
    assert [row["scores"]["tuned"]["correct"] for row in rows] == correct
    assert result["ci"]["tuned"]["accuracy"]["value"] == pytest.approx(sum(correct) / 12)
    base_correct = [row["scores"]["base"]["correct"] for row in rows]
    paired = result["paired"]["accuracy"]
    assert paired["test"] == "paired-bootstrap" and 0 < paired["mcnemar_p_value"] <= 1
    assert check_numbers(result) >= 4  # accuracy (both sides, paired), macro-F1, the baselines' rows
    assert paired["only_tuned_correct"] == sum(t > b for t, b in zip(correct, base_correct, strict=True))
    assert paired["only_base_correct"] == sum(t < b for t, b in zip(correct, base_correct, strict=True))

    # the baselines, fitted on train, predicted each row; their accuracy is theirs
    for name in ("majority", "tfidf_logreg"):
        acc = sum(row["baselines"][name] == row["label"] for row in rows) / 12
        assert result["baselines"][name]["metrics"]["accuracy"] == pytest.approx(acc)
        assert result["baselines"][name]["ci"]["accuracy"]["value"] == pytest.approx(acc)
    # the few-shot baseline: the base prompted with k train examples (never a test row), its answers parsed
    few = result["few_shot"]
    name = few["name"]
    assert name == f"few_shot_k{few['k']}" and few["k"] >= 3 and few["drawn_from"] == "train"
    train_rows = [json.loads(line) for line in (project / "ds" / "train.jsonl").read_text().splitlines()]
    shown = {train_rows[i]["text"] for i in few["train_rows"]}
    assert len(shown) == few["k"] and not shown & {row["record"]["text"] for row in rows}
    few_correct = [float(parse_label(row["baselines"][name], labels) == row["label"]) for row in rows]
    assert result["baselines"][name]["metrics"]["accuracy"] == pytest.approx(sum(few_correct) / 12)
    vs = result["baselines"][name]["vs_tuned"]
    assert vs["metric"] == "accuracy" and vs["diff"] == pytest.approx((sum(correct) - sum(few_correct)) / 12)
    assert f"{name}: the base prompted with {few['k']} train examples" in " ".join(r.stdout.split())
    # per-group accuracy (Fairlearn) equals a direct computation over the rows
    fair = result["fairness"]["group"]["tuned"]
    assert fair["counts"] == {"north": 8, "south": 4} and fair["too_small"] == []
    acc = {
        g: sum(c for c, row in zip(correct, rows, strict=True) if row["group"] == g) / n
        for g, n in (("north", 8), ("south", 4))
    }
    by_group = fair["metrics"]["accuracy"]["by_group"]
    assert {g: v["value"] for g, v in by_group.items()} == pytest.approx(acc)
    assert fair["metrics"]["accuracy"]["gap"] == pytest.approx(abs(acc["north"] - acc["south"]))

    # the report: every section, the numbers of the eval JSON, the data's sha256, offline HTML
    md = (run / "report.md").read_text()
    for section in (
        "Data",
        "Model and method",
        "Training",
        "Evaluation (test)",
        "Known limitations",
        "Environment",
        "Resolved config",
    ):
        assert f"\n## {section}\n" in md
    from tuneforge.artifacts import sha256_file
    from tuneforge.evaluation.report import with_ci

    assert sha256_file(project / "data.csv") in md
    acc_cell = with_ci(result["tuned"]["accuracy"], result["ci"]["tuned"]["accuracy"])
    assert (
        f"| accuracy | {with_ci(result['base']['accuracy'], result['ci']['base']['accuracy'])} | {acc_cell} |"
        in md
    )
    south = by_group["south"]
    assert "| accuracy | south | 4 | " in md and with_ci(south["value"], south) in md
    from tuneforge.evaluation.report.evaluation import few_shot_text

    assert few_shot_text(result) in md and f"| {name} | accuracy | " in md
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html

    # the model card: Hugging Face metadata with the results of the eval JSON
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "final" / "README.md")
    # the tiny base is a local folder: no Hub id to name, so no base_model (the Hub rejects a path there)
    assert card.data.base_model is None and card.data.library_name == "peft"
    few_acc = with_ci(
        result["baselines"][name]["metrics"]["accuracy"], result["baselines"][name]["ci"]["accuracy"]
    )
    assert f"- baseline {name}: accuracy {few_acc}; {vs['verdict']}" in card.text
    values = {e.metric_type: e.metric_value for e in card.data.eval_results}
    assert values["accuracy"] == pytest.approx(result["tuned"]["accuracy"])

    # human A/B: two raters; rater 1 always prefers answer 1, rater 2 always answer 2
    r = cli("human-eval", "export", "run", "--raters", "2")
    assert r.returncode == 0, r.stderr
    key = json.loads((run / "human-eval" / "key.json").read_text())
    sheets = run / "human-eval" / "sheets"
    assert "tuned" not in (sheets / "rater-1.csv").read_text().split("\n")[0]  # the key is not in the sheet
    differing = [row for row in rows if row["tuned"].strip() != row["base"].strip()]
    filled = []
    for k, choice in ((1, "1"), (2, "2")):
        with open(sheets / f"rater-{k}.csv", encoding="utf-8") as f:
            sheet = list(csv.DictReader(f))
        assert [s["row_id"] for s in sheet] == [str(row["id"]) for row in differing]
        for s in sheet:
            s["preference"] = choice
        path = project / f"filled-{k}.csv"
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(sheet[0]))
            w.writeheader()
            w.writerows(sheet)
        filled.append(str(path))
    r = cli("human-eval", "import", "run", *filled)
    assert r.returncode == 0, r.stderr
    human = json.loads((run / "eval" / "human.json").read_text())
    n = len(differing)
    wins1 = sum(key["sheets"]["rater-1"][str(row["id"])]["answer_1"] == "tuned" for row in differing)
    wins2 = sum(key["sheets"]["rater-2"][str(row["id"])]["answer_1"] == "base" for row in differing)
    assert human["per_rater"]["rater-1"].get("win", 0) == wins1
    assert human["overall"]["win"]["value"] == pytest.approx((wins1 + wins2) / (2 * n))
    assert human["overall"]["tie"]["value"] == 0.0
    prefs = Path(human["preference_dataset"])
    assert json.loads((prefs / "manifest.json").read_text())["format"] == "preference"
    assert human["preference_pairs"] == sum(
        (key["sheets"]["rater-1"][str(row["id"])]["answer_1"] == "tuned")
        == (key["sheets"]["rater-2"][str(row["id"])]["answer_1"] == "base")
        for row in differing
    )  # the two raters agreed on these; the rest is a 1–1 split and left out
    r = cli("report", "run")
    assert r.returncode == 0, r.stderr
    md = (run / "report.md").read_text()
    assert "\n## Human ratings\n" in md
    win = human["overall"]["win"]
    assert (
        f"- Human raters ({2 * n} blind ratings of the answers in eval/test.json), tuned vs base: "
        f"win {with_ci(win['value'], win)}, tie 0," in md
    )

    # DPO on the preference dataset the import wrote: the same base, its adapter trained on the pairs
    manifest = json.loads((run / "manifest.json").read_text())
    (project / "dpo.yaml").write_text(DPO_CONFIG.format(model=manifest["base_model"], prefs=prefs))
    r = cli("train", "dpo.yaml")
    assert r.returncode == 0, r.stderr
    dpo = project / "dpo"
    assert json.loads((dpo / "manifest.json").read_text())["objective"] == "dpo"
    steps = [row for row in map(json.loads, (dpo / "metrics.jsonl").read_text().splitlines())]
    assert len(steps) == 3 and all("reward_margin" in row for row in steps)
    r = cli("evaluate", "dpo")  # fewer than 20 pairs: the import put them all in train
    assert r.returncode != 0 and not (dpo / "eval").exists()
    assert f"--split: the test split of {prefs} holds no preference pairs" in r.stderr
    r = cli("evaluate", "dpo", "--split", "train", "--compare-base")
    assert r.returncode == 0, r.stderr
    result = json.loads((dpo / "eval" / "train.json").read_text())
    rows = [json.loads(line) for line in (dpo / "eval" / "train.predictions.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (prefs / "train.jsonl").read_text().splitlines()]
    assert [row["record"] for row in rows] == pairs and result["tuned"]["pairs"] == len(pairs)
    for side in ("tuned", "base"):
        margin = [row["scores"][side]["logp_margin"] for row in rows]
        assert [row["scores"][side]["correct"] for row in rows] == [float(m > 0) for m in margin]
        assert result[side]["accuracy"] == pytest.approx(sum(m > 0 for m in margin) / len(rows))
        assert result[side]["logp_margin"] == pytest.approx(sum(margin) / len(rows))
    assert result["tuned"]["reward_margin"] > 0  # trained on these very pairs
    assert "reward_margin" not in result["base"]  # the base has no adapter to switch off: no reference
    assert result["paired"]["accuracy"]["test"] == "paired-bootstrap"
    check_numbers(result)
