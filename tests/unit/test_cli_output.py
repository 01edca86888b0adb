"""What commands print, read at the width of a small terminal (80 columns)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from tuneforge import builtin, cli


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(width=80, file=out, color_system=None))
    return out


def test_models_shows_whole_names_and_install_commands(screen: io.StringIO) -> None:
    cli.models()
    text = screen.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for m in builtin.MODELS.values():
        assert f"│ builtin:{m.name} " in text  # on one line, not cut or folded
        assert f"install builtin:{m.name}: {m.pip}\n" in text


def test_config_keys_lists_every_method_option_with_its_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    from tuneforge.models.methods import METHODS

    cli.config_keys()  # stdout is not a terminal here: one line per key
    lines = capsys.readouterr().out.splitlines()
    assert "method.r (lora, qlora, dora)  (int, default 16)  Rank of the low-rank update." in lines
    assert (
        "method.num_virtual_tokens (prefix-tuning)  (int, default 20)  Learned key/value positions per layer."
        in lines
    )
    keys = [line.split("  ")[0] for line in lines]
    assert keys.index("method.name") + 1 == keys.index("method.r (lora, qlora, dora)")
    for method, module in METHODS.items():
        for name, field in module.Options.model_fields.items():
            assert field.description, f"{method}.{name} has no docstring"
            assert any(k.startswith(f"method.{name} (") and method in k for k in keys), (method, name)


def test_config_keys_lists_the_keys_of_an_optional_section_and_dpo_beta(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli.config_keys()
    lines = capsys.readouterr().out.splitlines()
    assert (
        "eval.judge  (section | None, default null)  LLM-as-judge over generated answers (off unless set)."
        in lines
    )
    assert "eval.judge.model  (str, default required)  Model name to send to the judge endpoint." in lines
    assert (
        "eval.judge.timeout_s  (float, default 60.0)  Seconds one judge request may take in all (connecting, "
        "waiting and reading the whole answer)." in lines
    )
    assert (
        "eval.judge.max_tokens  (int, default 256)  The longest judge answer to ask for "
        "(sent as max_tokens: a brief reason and the verdict)." in lines
    )
    assert (
        "train.dpo_beta  (float, default 0.1)  Preference data (DPO): how far the tuned model may move "
        "from the base; higher keeps it closer." in lines
    )


def test_the_comparison_shows_the_classical_baselines_beside_base_and_tuned(screen: io.StringIO) -> None:
    def scores(acc: float, f1: float, neg: float, ece: float | None = None) -> dict:
        m = {"accuracy": acc, "macro_f1": f1, "per_class": {"negative": {"f1": neg}, "positive": {"f1": 0.5}}}
        return m | ({} if ece is None else {"ece": ece})

    cli.print_comparison(
        {
            "evaluation": "test-first200",
            "split": "test",
            "n": 200,
            "labels": ["negative", "positive"],
            "tuned": scores(0.675, 0.582, 0.77, ece=0.088),
            "base": scores(0.14, 0.101, 0.076, ece=0.496),
            "baselines": {
                "majority": {"metrics": scores(0.41, 0.194, 0.0)},
                "tfidf_logreg": {"metrics": scores(0.75, 0.683, 0.8)},
            },
        }
    )
    lines = screen.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "metric" in line)
    assert [c.strip() for c in header.strip("│┃ ").split("┃")] == [
        "metric",
        "base",
        "tuned",
        "majority",
        "tfidf logreg",
    ]
    row = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in lines
        if "│" in line
    }
    assert row["macro_f1"] == ["0.101", "0.582", "0.194", "0.683"]
    assert row["ece"] == ["0.496", "0.088", "-", "-"]  # the baselines give labels, no probabilities
    assert row["f1 negative"] == ["0.076", "0.770", "0.000", "0.800"]


def test_the_few_shot_baseline_is_a_column_and_its_cost_a_line(screen: io.StringIO) -> None:
    def scores(acc: float, f1: float) -> dict:
        return {"accuracy": acc, "macro_f1": f1, "per_class": {"negative": {"f1": f1}}}

    few = "the base prompted with 6 train examples"
    result = {
        "evaluation": "test",
        "split": "test",
        "n": 200,
        "labels": ["negative", "positive"],
        "tuned": scores(0.675, 0.582),
        "base": scores(0.14, 0.101),
        "baselines": {
            "majority": {"metrics": scores(0.41, 0.194)},
            "tfidf_logreg": {"metrics": scores(0.75, 0.683)},
            "few_shot_k6": {
                "metrics": scores(0.52, 0.47),
                "vs_tuned": {"verdict": "tuned is better in accuracy by 0.155 [0.08, 0.23], p = 0.002"},
            },
        },
        "few_shot": {
            "name": "few_shot_k6",
            "k": 6,
            "k_chosen": "the auto cap 8, rounded down to 6",
            "seconds": 41.2,
        },
    }
    cli.print_comparison(result)
    cli.print_verdicts(result)
    lines = screen.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "metric" in line)
    assert [c.strip() for c in header.strip("│┃ ").split("┃")] == [
        "metric",
        "base",
        "tuned",
        "majority",
        "tfidf logreg",
        "few shot k6",
    ]
    row = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in lines
        if "│" in line and line.split("│")[1].strip() in ("accuracy", "macro_f1")
    }
    assert row["accuracy"] == ["0.14", "0.675", "0.41", "0.75", "0.52"]
    text = " ".join(screen.getvalue().split())
    assert "vs few_shot_k6: tuned is better in accuracy by 0.155 [0.08, 0.23], p = 0.002" in text
    assert (
        f"few_shot_k6: {few} (k: the auto cap 8, rounded down to 6); 41.2 s, eval.few_shot=0 turns it off"
        in text
    )


def test_what_a_command_wrote_is_one_labelled_path_a_line(screen: io.StringIO, tmp_path) -> None:
    """evaluate, report, tune and quickstart name their files one a line, labels aligned: a long path wraps
    on its own line, never beside another path (it once read `metrics: A  and` with B wrapped below)."""
    long = tmp_path / ("a-run-with-a-long-name-" * 3) / "eval" / "test.json"
    cli.print_paths([("metrics", long), ("predictions", long.with_suffix(".jsonl")), ("report", "r.html")])
    lines = screen.getvalue().splitlines()
    assert lines == [
        f"metrics:     {long}",
        f"predictions: {long.with_suffix('.jsonl')}",
        "report:      r.html",
    ]


def test_bracketed_words_in_help_are_shown_not_taken_for_markup() -> None:
    """Rich reads `[gguf]` in a help text as a style tag and drops it: `--to`'s help said "needs tuneforge or
    llama.cpp". Every word with a bracket in any option's help shows as written (escaped as `\\[`)."""
    import re

    import typer
    from typer.testing import CliRunner

    command = typer.main.get_command(cli.app)
    runner = CliRunner()
    checked = 0

    def walk(group, path: list[str]) -> None:  # type: ignore[no-untyped-def]
        nonlocal checked
        for name, sub in getattr(group, "commands", {}).items():
            walk(sub, [*path, name])
        words = [
            w.replace("\\[", "[").rstrip(".,;:)")
            for p in getattr(group, "params", [])
            for w in (getattr(p, "help", None) or "").split()
            if "[" in w and not re.match(r"^\\?\[default", w)
        ]
        if words:
            shown = runner.invoke(cli.app, [*path, "--help"], terminal_width=200).output
            for w in words:
                assert w in shown, (path, w)
                checked += 1

    walk(command, [])
    assert checked >= 1


def test_verdicts_wrap_as_items_at_80_columns(screen: io.StringIO) -> None:
    """A verdict longer than the terminal continues indented under itself (rich's wrap began the rest at
    column 0, where it read as a line of its own)."""
    verdict = "no evidence of a difference in accuracy (diff +0.25 [-0.0833, +0.583], p = 0.22)"
    cli.print_verdicts({"paired": {}, "baselines": {"tfidf_logreg": {"vs_tuned": {"verdict": verdict}}}})
    lines = screen.getvalue().splitlines()
    assert lines == [
        "  vs tfidf_logreg: no evidence of a difference in accuracy (diff +0.25 [-0.0833,",
        "    +0.583], p = 0.22)",
    ]


def test_prepare_says_what_it_made_in_labelled_lines(
    screen: io.StringIO, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder, the splits, the rows read and written and why the rest were not, the report: labelled
    lines within 80 columns (it printed two Python dicts that wrapped to column 0)."""
    from pathlib import Path

    import yaml

    from tests.tiny import TOKENIZER, sentiment_rows, write_csv

    monkeypatch.chdir(tmp_path)
    rows = sentiment_rows(40)
    rows[5] = dict(rows[4])  # one exact duplicate
    rows[7]["text"] = ""  # one invalid row
    write_csv(tmp_path / "data.csv", rows)
    config = {
        "data": {"path": "data.csv", "output_dir": "ds", "min_examples": 5},
        "model": {"name": str(TOKENIZER)},
    }
    Path("prep.yaml").write_text(yaml.safe_dump(config))
    cli.prepare(Path("prep.yaml"), None, False)
    lines = screen.getvalue().splitlines()
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    s = manifest["splits"]
    assert lines[0] == "dataset: ds (classification)"
    assert lines[1] == f"splits:  train {s['train']} · validation {s['validation']} · test {s['test']}"
    assert lines[2].startswith(
        f"rows:    40 read, {manifest['counts']['written']} written; not written or changed: "
    )
    text = " ".join(" ".join(lines).split())
    left_out = {k: v for k, v in manifest["counts"].items() if v and k not in ("read", "written", "rejected")}
    assert left_out.get("exact_duplicates") == 1 and len(left_out) >= 2
    for key, n in left_out.items():
        assert f"{key.replace('_', ' ')} {n}" in text
    assert lines[-1] == "report:  ds/report.html" and all(len(line) <= 80 for line in lines)
