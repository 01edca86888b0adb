"""SmolLM2 chat SFT → evaluate with generation → report: the report shows the model's real answers.

The only test of the report on a real model: a tiny random model's answers are byte soup, so only here can
a reader's view (decoded text, not the prompt echoed) be checked. Two LoRA steps, three test chats.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from tests.tiny import write_jsonl

pytestmark = pytest.mark.slow

QA = [
    ("What is the capital of France?", "Paris."),
    ("How many legs does a spider have?", "Eight."),
    ("What colour is a ripe banana?", "Yellow."),
    ("Which planet is closest to the sun?", "Mercury."),
    ("What do bees make?", "Honey."),
    ("How many days are in a week?", "Seven."),
    ("What is frozen water called?", "Ice."),
    ("Which animal is known as the king of the jungle?", "The lion."),
    ("What gas do plants take in?", "Carbon dioxide."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare."),
    ("How many continents are there?", "Seven."),
    ("What is the boiling point of water in Celsius?", "100 degrees."),
    ("Which metal is liquid at room temperature?", "Mercury."),
    ("What language is spoken in Brazil?", "Portuguese."),
    ("What is the tallest mountain in the world?", "Mount Everest."),
    ("How many hours are in a day?", "Twenty-four."),
    ("What do caterpillars turn into?", "Butterflies or moths."),
    ("Which instrument has 88 keys?", "The piano."),
    ("What is the chemical symbol for gold?", "Au."),
]

CONFIG = """\
data: {path: chats.jsonl, output_dir: ds}
model: {name: "builtin:smollm2-135m-instruct", task: causal-lm, max_length: 128}
method: {name: lora, r: 4}
train: {output_dir: run, max_steps: 2, batch_size: 2, learning_rate: 2.0e-3, eval_every: 0, save_every: 0,
        progress: false}
eval: {max_examples: 3, batch_size: 3, bootstrap: 50, max_new_tokens: 16, compare_base: true}
"""


def test_smollm2_chat_report_shows_real_answers(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    from tuneforge.config import load_config
    from tuneforge.evaluation import evaluate_run
    from tuneforge.evaluation.report.model_card import CARD_METRICS
    from tuneforge.evaluation.report.render import visible
    from tuneforge.train import train

    chats = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA
    ]
    write_jsonl(tmp_path / "chats.jsonl", chats)
    (tmp_path / "run.yaml").write_text(CONFIG)
    cfg, source = load_config(
        tmp_path / "run.yaml", [f"data.output_dir={tmp_path / 'ds'}", f"train.output_dir={tmp_path / 'run'}"]
    )
    cfg.data.path = str(tmp_path / "chats.jsonl")
    run = train(cfg, source).path
    result = json.loads(evaluate_run(run).read_text())  # writes report.html, report.md and the card

    rows = [json.loads(line) for line in (run / "eval" / "test.predictions.jsonl").read_text().splitlines()]
    assert len(rows) == result["n"] == 3
    page = (run / "report.html").read_text()
    questions = {q for q, _ in QA}
    for row in rows:
        answer = row["tuned"]
        assert isinstance(answer, str) and answer.strip()
        assert row["input"] in questions and row["input"] not in answer  # an answer, not the prompt echoed
        assert "<|im_start|>" not in answer and "<|im_end|>" not in answer  # decoded without special tokens
        # the report shows the very text of predictions.jsonl (whitespace folded, as the table does)
        assert html.escape(" ".join(visible(answer).split())) in page
    assert result["guard"]["checked"] and {"bleu", "token_f1", "chrf"} <= set(result["tuned"])

    card = ModelCard.load(run / "final" / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    by_display = {display: name for name, (_, display, _) in CARD_METRICS.items()}
    shown = {by_display[e.metric_name]: e.metric_value for e in card.data.eval_results}
    assert set(shown) == {n for n in CARD_METRICS if isinstance(result["tuned"].get(n), int | float)}
    assert shown == {n: pytest.approx(result["tuned"][n]) for n in shown}
